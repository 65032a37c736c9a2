package ctl

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	// Registers the API's descriptors and Go types, which the generic calls
	// below look up by name.
	_ "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// resourceClient makes the five standard calls of any kind. The requests are
// the generated Go types, found in the registry by the method descriptors,
// so the wire format is exactly that of the generated clients.
type resourceClient struct {
	conn grpc.ClientConnInterface
}

// methodFor resolves e.g. ("Create", Vpc) to NetworkService.CreateVpc.
func methodFor(k *kindInfo, verb string) (protoreflect.MethodDescriptor, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(k.Service)
	if err != nil {
		return nil, fmt.Errorf("service %s of %s: %w", k.Service, k.Name, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", k.Service)
	}
	name := verb + k.Name
	if verb == "List" {
		name += "s" // every collection of the API is a plain plural
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil, fmt.Errorf("service %s has no method %s", k.Service, name)
	}
	return md, nil
}

// invoke calls verb on kind k; fill sets the request's fields.
func (c *resourceClient) invoke(ctx context.Context, k *kindInfo, verb string, fill func(req protoreflect.Message) error) (protoreflect.Message, error) {
	md, err := methodFor(k, verb)
	if err != nil {
		return nil, err
	}
	in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, fmt.Errorf("request type of %s: %w", md.FullName(), err)
	}
	out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, fmt.Errorf("response type of %s: %w", md.FullName(), err)
	}
	req, resp := in.New(), out.New()
	if err := fill(req); err != nil {
		return nil, err
	}
	path := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	if err := c.conn.Invoke(ctx, path, req.Interface(), resp.Interface()); err != nil {
		return nil, err // a gRPC status: the caller explains it with context
	}
	return resp, nil
}

// setString sets a string field of a request by name.
func setString(m protoreflect.Message, name protoreflect.Name, v string) error {
	fd := m.Descriptor().Fields().ByName(name)
	if fd == nil {
		return fmt.Errorf("%s has no field %s", m.Descriptor().FullName(), name)
	}
	if v != "" {
		m.Set(fd, protoreflect.ValueOfString(v))
	}
	return nil
}

func setBool(m protoreflect.Message, name protoreflect.Name, v bool) error {
	fd := m.Descriptor().Fields().ByName(name)
	if fd == nil {
		return fmt.Errorf("%s has no field %s", m.Descriptor().FullName(), name)
	}
	m.Set(fd, protoreflect.ValueOfBool(v))
	return nil
}

// resourceField finds the field of a request or response holding the kind's
// message (singular or repeated): "vpc" in CreateVpcRequest, "vpcs" in
// ListVpcsResponse.
func resourceField(m protoreflect.MessageDescriptor, k *kindInfo) (protoreflect.FieldDescriptor, error) {
	want := k.New().ProtoReflect().Descriptor().FullName()
	fields := m.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() != nil && fd.Message().FullName() == want {
			return fd, nil
		}
	}
	return nil, fmt.Errorf("%s has no %s field", m.FullName(), want)
}

// Create creates m under parent with the given ID.
func (c *resourceClient) Create(ctx context.Context, k *kindInfo, parent, id string, m proto.Message, validateOnly bool) (proto.Message, error) {
	resp, err := c.invoke(ctx, k, "Create", func(req protoreflect.Message) error {
		fd, err := resourceField(req.Descriptor(), k)
		if err != nil {
			return err
		}
		req.Set(fd, protoreflect.ValueOfMessage(m.ProtoReflect()))
		idField := fd.Name() + "_id" // "network_acl_id"
		if err := setString(req, idField, id); err != nil {
			return err
		}
		if err := setString(req, "parent", parent); err != nil {
			return err
		}
		return setBool(req, "validate_only", validateOnly)
	})
	if err != nil {
		return nil, err
	}
	return resp.Interface(), nil
}

// Get reads one resource.
func (c *resourceClient) Get(ctx context.Context, k *kindInfo, name string) (proto.Message, error) {
	resp, err := c.invoke(ctx, k, "Get", func(req protoreflect.Message) error {
		return setString(req, "name", name)
	})
	if err != nil {
		return nil, err
	}
	return resp.Interface(), nil
}

// ListPage reads one page of a listing.
func (c *resourceClient) ListPage(ctx context.Context, k *kindInfo, parent, filter string, pageSize int32, token string) ([]proto.Message, string, error) {
	resp, err := c.invoke(ctx, k, "List", func(req protoreflect.Message) error {
		if err := setString(req, "parent", parent); err != nil {
			return err
		}
		if err := setString(req, "filter", filter); err != nil {
			return err
		}
		if err := setString(req, "page_token", token); err != nil {
			return err
		}
		if pageSize > 0 {
			req.Set(req.Descriptor().Fields().ByName("page_size"), protoreflect.ValueOfInt32(pageSize))
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	fd, err := resourceField(resp.Descriptor(), k)
	if err != nil {
		return nil, "", err
	}
	list := resp.Get(fd).List()
	items := make([]proto.Message, list.Len())
	for i := range items {
		items[i] = list.Get(i).Message().Interface()
	}
	next := resp.Get(resp.Descriptor().Fields().ByName("next_page_token")).String()
	return items, next, nil
}

// Update writes the fields in mask of m (which carries name and etag).
func (c *resourceClient) Update(ctx context.Context, k *kindInfo, m proto.Message, mask []string, validateOnly bool) (proto.Message, error) {
	resp, err := c.invoke(ctx, k, "Update", func(req protoreflect.Message) error {
		fd, err := resourceField(req.Descriptor(), k)
		if err != nil {
			return err
		}
		req.Set(fd, protoreflect.ValueOfMessage(m.ProtoReflect()))
		if len(mask) > 0 {
			mfd := req.Descriptor().Fields().ByName("update_mask")
			req.Set(mfd, protoreflect.ValueOfMessage((&fieldmaskpb.FieldMask{Paths: mask}).ProtoReflect()))
		}
		return setBool(req, "validate_only", validateOnly)
	})
	if err != nil {
		return nil, err
	}
	return resp.Interface(), nil
}

// Delete deletes a resource; a non-empty etag must match.
func (c *resourceClient) Delete(ctx context.Context, k *kindInfo, name, etag string, validateOnly bool) error {
	_, err := c.invoke(ctx, k, "Delete", func(req protoreflect.Message) error {
		if err := setString(req, "name", name); err != nil {
			return err
		}
		if err := setString(req, "etag", etag); err != nil {
			return err
		}
		return setBool(req, "validate_only", validateOnly)
	})
	return err
}
