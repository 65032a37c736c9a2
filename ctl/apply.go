package ctl

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func (a *app) readDocuments(path string) ([]*Document, error) {
	if path == "" {
		return nil, fmt.Errorf("give the topology file with -f FILE")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return parseDocuments(a.kinds, path, data)
}

func (a *app) applyCommand() *cobra.Command {
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update the resources of a YAML topology, in dependency order",
		Long: `apply converges the controller to a topology file: YAML documents, each
"kind: Vpc" (Project, Node, PublicAddressPool, BgpPeer, Vpc, NetworkAcl,
RouteTable, Subnet, SecurityGroup, Port, ElasticIp, NatGateway) plus the
resource's fields in protojson names.

Resources that do not exist are created. Existing ones are compared on the
fields the document sets, and only differing fields are updated (with the
etag read, so a concurrent change fails instead of being overwritten).
Nothing is ever deleted: use "meridianctl delete -f FILE" for that.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docs, err := a.readDocuments(file)
			if err != nil {
				return err
			}
			return a.apply(cmd.Context(), docs, dryRun)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "topology file (YAML, several documents)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate every change on the controller (validate_only) without storing anything")
	return cmd
}

// apply converges each document in dependency order, stopping at the first
// failure since later documents usually depend on the failed one.
func (a *app) apply(ctx context.Context, docs []*Document, dryRun bool) error {
	rc, err := a.resources()
	if err != nil {
		return err
	}
	var pending []string // dry run: names that would have been created
	for _, d := range orderDocuments(docs) {
		line, err := a.applyOne(ctx, rc, d, dryRun)
		if err != nil && dryRun && dependsOnPending(err, pending) {
			// Nothing was stored for the earlier documents, so the controller
			// cannot find what this one refers to: not the document's fault.
			a.printf("%s %s %s (dry run; not fully validated: it refers to resources this dry run did not store)\n",
				d.Kind.Command, d.Name, line)
			pending = append(pending, d.Name)
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", d.where(), err)
		}
		if dryRun && line == "created" {
			pending = append(pending, d.Name)
		}
		a.printf("%s %s %s%s\n", d.Kind.Command, d.Name, line, dryRunNote(dryRun && line != "unchanged"))
	}
	return nil
}

// dependsOnPending reports whether a dry-run failure is only that the
// request names resources the dry run would have created: the controller
// reports a missing parent as NotFound and a missing reference as an
// InvalidArgument or FailedPrecondition naming it.
func dependsOnPending(err error, pending []string) bool {
	if !isCode(err, codes.NotFound) && !isCode(err, codes.InvalidArgument) && !isCode(err, codes.FailedPrecondition) {
		return false
	}
	for _, name := range pending {
		if strings.Contains(err.Error(), name) {
			return true
		}
	}
	return false
}

// applyOne converges one document and says what it did or, with an error,
// what it tried to do.
func (a *app) applyOne(ctx context.Context, rc *resourceClient, d *Document, dryRun bool) (string, error) {
	k := d.Kind
	var cur proto.Message
	err := a.call(ctx, func(ctx context.Context) (err error) {
		cur, err = rc.Get(ctx, k, d.Name)
		return err
	})
	switch {
	case isCode(err, codes.NotFound):
		parent, id, err := k.ParseName(d.Name)
		if err != nil {
			return "", err
		}
		err = a.call(ctx, func(ctx context.Context) error {
			_, err := rc.Create(ctx, k, parent, id, d.Msg, dryRun)
			return err
		})
		if err != nil {
			return "created", a.explain("create "+k.Command+" "+d.Name, err)
		}
		return "created", nil
	case err != nil:
		return "", a.explain("get "+k.Command+" "+d.Name, err)
	}
	mask := diffFields(d.Msg, cur, d.Fields)
	if len(mask) == 0 {
		return "unchanged", nil
	}
	upd := updateMessage(d.Msg, mask, cur)
	err = a.call(ctx, func(ctx context.Context) error {
		_, err := rc.Update(ctx, k, upd, mask, dryRun)
		return err
	})
	line := "updated (" + strings.Join(mask, ", ") + ")"
	if err != nil {
		return line, a.explain("update "+k.Command+" "+d.Name+" ("+strings.Join(mask, ", ")+")", err)
	}
	return line, nil
}

// updateMessage is the document's resource reduced to name, the etag of
// cur (so a change made since the Get fails with ABORTED rather than being
// overwritten) and the fields in mask.
func updateMessage(doc proto.Message, mask []string, cur proto.Message) proto.Message {
	out := doc.ProtoReflect().New()
	src := doc.ProtoReflect()
	md := out.Descriptor()
	copyField := func(name protoreflect.Name, from protoreflect.Message) {
		fd := md.Fields().ByName(name)
		if from.Has(fd) {
			out.Set(fd, from.Get(fd))
		}
	}
	copyField("name", src)
	copyField("etag", cur.ProtoReflect())
	for _, p := range mask {
		copyField(protoreflect.Name(p), src)
	}
	return out.Interface()
}

func (a *app) deleteFileCommand() *cobra.Command {
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "delete -f FILE",
		Short: "Delete the resources of a topology file, in reverse dependency order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docs, err := a.readDocuments(file)
			if err != nil {
				return err
			}
			rc, err := a.resources()
			if err != nil {
				return err
			}
			ordered := orderDocuments(docs)
			for i := len(ordered) - 1; i >= 0; i-- {
				d := ordered[i]
				err := a.call(cmd.Context(), func(ctx context.Context) error {
					return rc.Delete(ctx, d.Kind, d.Name, "", dryRun)
				})
				switch {
				case isCode(err, codes.NotFound):
					a.printf("%s %s not found (already deleted)\n", d.Kind.Command, d.Name)
				case err != nil:
					return fmt.Errorf("%s: %w", d.where(), a.explain("delete "+d.Kind.Command+" "+d.Name, err))
				default:
					a.printf("%s %s deleted%s\n", d.Kind.Command, d.Name, dryRunNote(dryRun))
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "topology file (YAML, several documents)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate each deletion on the controller without deleting")
	return cmd
}
