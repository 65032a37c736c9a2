package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

func (a *app) whoamiCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the controller takes you for: subject, role, organization, projects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := a.client()
			if err != nil {
				return err
			}
			var r *v1.WhoAmIResponse
			err = a.call(cmd.Context(), func(ctx context.Context) error {
				r, err = v1.NewIdentityServiceClient(conn).WhoAmI(ctx, &v1.WhoAmIRequest{})
				return err
			})
			if err != nil {
				return a.explain("whoami", err)
			}
			if a.output != formatTable {
				return printMessage(a.Out, a.output, r)
			}
			a.printf("subject:      %s\nrole:         %s\n", r.GetSubject(), r.GetRole())
			if r.GetOrganization() != "" {
				a.printf("organization: %s\n", r.GetOrganization())
			}
			if len(r.GetProjects()) > 0 {
				a.printf("projects:     %s\n", strings.Join(r.GetProjects(), ", "))
			}
			return nil
		},
	}
}

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit log of mutations"}
	var project string
	var pageSize int32
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit records (who changed what, when), oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := a.client()
			if err != nil {
				return err
			}
			c := v1.NewAuditServiceClient(conn)
			var records []*v1.AuditRecord
			token := ""
			for {
				var r *v1.ListAuditRecordsResponse
				err = a.call(cmd.Context(), func(ctx context.Context) error {
					r, err = c.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Project: project, PageSize: pageSize, PageToken: token})
					return err
				})
				if err != nil {
					return a.explain("audit list", err)
				}
				records = append(records, r.GetRecords()...)
				if r.GetNextPageToken() == "" || r.GetNextPageToken() == token {
					break
				}
				token = r.GetNextPageToken()
			}
			if a.output != formatTable {
				return printMessage(a.Out, a.output, &v1.ListAuditRecordsResponse{Records: records})
			}
			tw := tabwriter.NewWriter(a.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REVISION\tTIME\tSUBJECT\tROLE\tMETHOD\tRESOURCE")
			for _, r := range records {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.GetRevision(), r.GetTime().AsTime().UTC().Format("2006-01-02T15:04:05Z"),
					r.GetSubject(), r.GetRole(), r.GetMethod(), r.GetResource())
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&project, "project", "", "only this project (projects/NAME); empty: all you may see")
	list.Flags().Int32Var(&pageSize, "page-size", 0, "records per page (default: the controller's)")
	cmd.AddCommand(list)
	return cmd
}

func (a *app) watchCommand() *cobra.Command {
	var parent string
	var kindNames []string
	var from int64
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print resource changes as they happen (Ctrl-C to stop)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &v1.WatchRequest{Parent: parent, FromRevision: from}
			for _, n := range kindNames {
				k, err := a.kinds.lookup(n)
				if err != nil {
					return fmt.Errorf("--kind: %w", err)
				}
				req.Kinds = append(req.Kinds, k.Name)
			}
			conn, err := a.client()
			if err != nil {
				return err
			}
			// No --timeout: a watch runs until the user stops it.
			stream, err := v1.NewWatchServiceClient(conn).Watch(cmd.Context(), req)
			if err != nil {
				return a.explain("watch", err)
			}
			if a.output == formatTable {
				a.printf("%-10s %-7s %-14s %s\n", "REVISION", "TYPE", "KIND", "NAME")
			}
			for {
				ev, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil // stopped by the user
					}
					return a.explain("watch", err)
				}
				if err := a.printEvent(ev); err != nil {
					return err
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&parent, "parent", "", "projects/NAME; empty: everything you may see")
	f.StringSliceVar(&kindNames, "kind", nil, "only these kinds (repeatable; e.g. vpc,port)")
	f.Int64Var(&from, "from-revision", 0, "replay changes after this revision (0: from now)")
	return cmd
}

// printEvent prints one watch event: a table line, or one JSON object per
// line (so the stream can be piped into jq), or a YAML document.
func (a *app) printEvent(ev *v1.WatchEvent) error {
	switch a.output {
	case formatJSON:
		b, err := protojson.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		a.printf("%s\n", b)
		return nil
	case formatYAML:
		a.printf("---\n")
		return printMessage(a.Out, formatYAML, ev)
	}
	kind, name := "-", "-"
	rm := ev.GetResource().ProtoReflect()
	if od := rm.Descriptor().Oneofs().ByName("kind"); od != nil {
		if fd := rm.WhichOneof(od); fd != nil {
			m := rm.Get(fd).Message()
			kind = string(m.Descriptor().Name())
			name = m.Get(m.Descriptor().Fields().ByName(protoreflect.Name("name"))).String()
		}
	}
	a.printf("%-10d %-7s %-14s %s\n", ev.GetRevision(), ev.GetType(), kind, name)
	return nil
}
