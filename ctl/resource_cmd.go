package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"
)

// kindCommand builds "meridianctl <kind> create|get|list|update|delete".
func (a *app) kindCommand(k *kindInfo) *cobra.Command {
	cmd := &cobra.Command{
		Use:     k.Command,
		Aliases: k.Aliases,
		Short:   fmt.Sprintf("Manage %s resources (%s)", k.Name, k.Pattern()),
	}
	cmd.AddCommand(a.createCommand(k), a.getCommand(k), a.listCommand(k), a.updateCommand(k), a.deleteCommand(k))
	return cmd
}

// resourceFlags are the ways create and update take a resource: a file,
// then common flags on top of it.
type resourceFlags struct {
	file        string
	labels      []string
	description string
	strs        map[string]*string
	lists       map[string]*[]string
}

func (a *app) addResourceFlags(cmd *cobra.Command, k *kindInfo) *resourceFlags {
	rf := &resourceFlags{strs: map[string]*string{}, lists: map[string]*[]string{}}
	f := cmd.Flags()
	f.StringVarP(&rf.file, "file", "f", "", "YAML or JSON file with the resource's fields (- for stdin)")
	f.StringArrayVar(&rf.labels, "label", nil, "label KEY=VALUE (repeatable)")
	f.StringVar(&rf.description, "description", "", "description")
	md := k.New().ProtoReflect().Descriptor()
	for _, c := range k.Flags {
		fd := md.Fields().ByName(c.Field)
		if fd == nil {
			// A programming error in kindTable, caught by TestKindTable.
			panic(fmt.Sprintf("flag --%s of %s: no field %s", c.Name, k.Name, c.Field))
		}
		if fd.IsList() {
			rf.lists[c.Name] = f.StringSlice(c.Name, nil, c.Usage)
		} else {
			rf.strs[c.Name] = f.String(c.Name, "", c.Usage)
		}
	}
	return rf
}

// build assembles the resource from -f and the flags. It returns the
// message and the top-level fields the user set (proto names), which is
// the natural update mask.
func (a *app) build(cmd *cobra.Command, k *kindInfo, rf *resourceFlags, name string) (proto.Message, []string, error) {
	m := k.New()
	var set []string
	if rf.file != "" {
		fm, fields, err := a.readResourceFile(k, rf.file)
		if err != nil {
			return nil, nil, err
		}
		m = fm
		md := m.ProtoReflect().Descriptor()
		for i := 0; i < md.Fields().Len(); i++ {
			fd := md.Fields().Get(i)
			if _, ok := keyOf(fields, fd); ok && fd.Name() != "name" && !outputOnly(fd) {
				set = append(set, string(fd.Name()))
			}
		}
	}
	if fileName := nameOf(m); fileName != "" && name != "" && fileName != name {
		return nil, nil, fmt.Errorf("the name %s in %s differs from the argument %s", fileName, rf.file, name)
	}
	if name == "" {
		name = nameOf(m)
	}
	if name == "" {
		return nil, nil, fmt.Errorf("give the %s's name (%s) as an argument or as name: in the file", k.Name, k.Pattern())
	}
	if _, _, err := k.ParseName(name); err != nil {
		return nil, nil, err
	}
	pm := m.ProtoReflect()
	pm.Set(pm.Descriptor().Fields().ByName("name"), protoreflect.ValueOfString(name))
	mark := func(f protoreflect.Name) {
		for _, s := range set {
			if s == string(f) {
				return
			}
		}
		set = append(set, string(f))
	}
	for _, c := range k.Flags {
		if !cmd.Flags().Changed(c.Name) {
			continue
		}
		fd := pm.Descriptor().Fields().ByName(c.Field)
		if fd.IsList() {
			l := pm.Mutable(fd).List()
			l.Truncate(0)
			for _, v := range *rf.lists[c.Name] {
				l.Append(protoreflect.ValueOfString(v))
			}
		} else {
			pm.Set(fd, protoreflect.ValueOfString(*rf.strs[c.Name]))
		}
		mark(c.Field)
	}
	if cmd.Flags().Changed("label") {
		lm := pm.Mutable(pm.Descriptor().Fields().ByName("labels")).Map()
		for _, l := range rf.labels {
			key, val, ok := strings.Cut(l, "=")
			if !ok || key == "" {
				return nil, nil, fmt.Errorf("--label %q: want KEY=VALUE", l)
			}
			lm.Set(protoreflect.ValueOfString(key).MapKey(), protoreflect.ValueOfString(val))
		}
		mark("labels")
	}
	if cmd.Flags().Changed("description") {
		pm.Set(pm.Descriptor().Fields().ByName("description"), protoreflect.ValueOfString(rf.description))
		mark("description")
	}
	return m, set, nil
}

// readResourceFile reads one resource of kind k from YAML or JSON; "kind:"
// may be present (so apply documents can be reused) but must match.
func (a *app) readResourceFile(k *kindInfo, path string) (proto.Message, map[string]any, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(a.In)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: invalid YAML: %w", path, err)
	}
	var obj map[string]any
	if err := json.Unmarshal(j, &obj); err != nil || obj == nil {
		return nil, nil, fmt.Errorf("%s: want one mapping of the %s's fields", path, k.Name)
	}
	if kind, ok := obj["kind"]; ok {
		if s, _ := kind.(string); s != k.Name {
			return nil, nil, fmt.Errorf("%s: kind %v, but this command manages %s", path, kind, k.Name)
		}
		delete(obj, "kind")
	}
	m, err := decodeResource(k, obj)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %s: %w", path, k.Name, err)
	}
	return m, obj, nil
}

func (a *app) createCommand(k *kindInfo) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: fmt.Sprintf("Create a %s (NAME: %s)", k.Name, k.Pattern()),
		Args:  cobra.MaximumNArgs(1),
	}
	rf := a.addResourceFlags(cmd, k)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "let the controller validate the request without storing anything")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		m, _, err := a.build(cmd, k, rf, argOr(args))
		if err != nil {
			return err
		}
		name := nameOf(m)
		parent, id, err := k.ParseName(name)
		if err != nil {
			return err
		}
		rc, err := a.resources()
		if err != nil {
			return err
		}
		var got proto.Message
		err = a.call(cmd.Context(), func(ctx context.Context) error {
			got, err = rc.Create(ctx, k, parent, id, m, dryRun)
			return err
		})
		if err != nil {
			return a.explain("create "+k.Command+" "+name, err)
		}
		return printResources(a.Out, a.output, k, []proto.Message{got}, true)
	}
	return cmd
}

func (a *app) getCommand(k *kindInfo) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: fmt.Sprintf("Show a %s", k.Name),
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := a.resources()
			if err != nil {
				return err
			}
			var got proto.Message
			err = a.call(cmd.Context(), func(ctx context.Context) error {
				got, err = rc.Get(ctx, k, args[0])
				return err
			})
			if err != nil {
				return a.explain("get "+k.Command+" "+args[0], err)
			}
			return printResources(a.Out, a.output, k, []proto.Message{got}, true)
		},
	}
}

func (a *app) listCommand(k *kindInfo) *cobra.Command {
	var parent, filter string
	var pageSize int32
	cmd := &cobra.Command{
		Use:   "list",
		Short: fmt.Sprintf("List %ss, following page tokens to the end", k.Name),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := a.resources()
			if err != nil {
				return err
			}
			// One deadline per page: a long listing is not one slow call.
			var items []proto.Message
			token := ""
			for {
				var page []proto.Message
				var next string
				err = a.call(cmd.Context(), func(ctx context.Context) error {
					page, next, err = rc.ListPage(ctx, k, parent, filter, pageSize, token)
					return err
				})
				if err != nil {
					return a.explain("list "+k.Command+"s", err)
				}
				items = append(items, page...)
				if next == "" || next == token {
					break
				}
				token = next
			}
			return printResources(a.Out, a.output, k, items, false)
		},
	}
	f := cmd.Flags()
	if k.Parent != nil {
		// The controller lists one collection at a time.
		f.StringVar(&parent, "parent", "", fmt.Sprintf("parent (%s)", k.Parent.Pattern()))
		_ = cmd.MarkFlagRequired("parent") // cannot fail: the flag was just defined
	}
	f.StringVar(&filter, "filter", "", `field=value terms joined by " AND ", e.g. "labels.tier=web"`)
	f.Int32Var(&pageSize, "page-size", 0, "resources per page (default: the controller's)")
	return cmd
}

func (a *app) updateCommand(k *kindInfo) *cobra.Command {
	var mask []string
	var etag string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "update NAME -f FILE",
		Short: fmt.Sprintf("Update a %s: the fields in the file and flags, or --mask", k.Name),
		Args:  cobra.MaximumNArgs(1),
	}
	rf := a.addResourceFlags(cmd, k)
	f := cmd.Flags()
	f.StringSliceVar(&mask, "mask", nil, "fields to update (default: those the file and flags set)")
	f.StringVar(&etag, "etag", "", "fail unless the resource still has this etag")
	f.BoolVar(&dryRun, "dry-run", false, "let the controller validate the request without storing anything")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		m, set, err := a.build(cmd, k, rf, argOr(args))
		if err != nil {
			return err
		}
		paths := set
		if len(mask) > 0 {
			if paths, err = maskPaths(k, mask); err != nil {
				return err
			}
		}
		if len(paths) == 0 {
			return fmt.Errorf("nothing to update: give -f FILE, flags, or --mask")
		}
		if etag != "" {
			pm := m.ProtoReflect()
			pm.Set(pm.Descriptor().Fields().ByName("etag"), protoreflect.ValueOfString(etag))
		}
		rc, err := a.resources()
		if err != nil {
			return err
		}
		var got proto.Message
		err = a.call(cmd.Context(), func(ctx context.Context) error {
			got, err = rc.Update(ctx, k, m, paths, dryRun)
			return err
		})
		if err != nil {
			return a.explain("update "+k.Command+" "+nameOf(m), err)
		}
		return printResources(a.Out, a.output, k, []proto.Message{got}, true)
	}
	return cmd
}

// maskPaths turns --mask entries (JSON or proto names) into proto names,
// the form FieldMask paths take.
func maskPaths(k *kindInfo, mask []string) ([]string, error) {
	md := k.New().ProtoReflect().Descriptor()
	var out []string
	for _, p := range mask {
		head, rest, nested := strings.Cut(p, ".")
		fd := lookupField(md, head)
		if fd == nil {
			msg := fmt.Sprintf("--mask: %s has no field %q", k.Name, head)
			if s := suggest(md, head); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return nil, fmt.Errorf("%s", msg)
		}
		path := string(fd.Name())
		if nested {
			path += "." + rest // labels.tier: passed through for the server to judge
		}
		out = append(out, path)
	}
	return out, nil
}

func (a *app) deleteCommand(k *kindInfo) *cobra.Command {
	var etag string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: fmt.Sprintf("Delete a %s", k.Name),
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := a.resources()
			if err != nil {
				return err
			}
			err = a.call(cmd.Context(), func(ctx context.Context) error {
				return rc.Delete(ctx, k, args[0], etag, dryRun)
			})
			if err != nil {
				return a.explain("delete "+k.Command+" "+args[0], err)
			}
			a.printf("%s %s deleted%s\n", k.Command, args[0], dryRunNote(dryRun))
			return nil
		},
	}
	cmd.Flags().StringVar(&etag, "etag", "", "fail unless the resource still has this etag")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "let the controller validate the request without deleting anything")
	return cmd
}

func argOr(args []string) string {
	if len(args) > 0 {
		return args[0]
	}
	return ""
}

func dryRunNote(dryRun bool) string {
	if dryRun {
		return " (dry run)"
	}
	return ""
}
