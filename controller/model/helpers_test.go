package model

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// memTx is an in-memory store.ReadTx over a map of key -> resource, enough
// for Load. It also turns writes into the events the store would emit.
type memTx struct {
	rev  int64
	data map[string][]byte
}

func newMemTx() *memTx { return &memTx{data: map[string][]byte{}} }

func (t *memTx) Revision() int64 { return t.rev }

func (t *memTx) Get(key string) (store.KV, bool, error) {
	v, ok := t.data[key]
	return store.KV{Key: key, Value: v}, ok, nil
}

func (t *memTx) List(prefix, startAfter string, limit int) ([]store.KV, error) {
	var keys []string
	for k := range t.data {
		if strings.HasPrefix(k, prefix) && k > startAfter {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
	}
	out := make([]store.KV, 0, len(keys))
	for _, k := range keys {
		out = append(out, store.KV{Key: k, Value: t.data[k]})
	}
	return out, nil
}

func (t *memTx) Count(prefix string) (int, error) {
	kvs, _ := t.List(prefix, "", 0)
	return len(kvs), nil
}

// storeKey returns the store key of a resource message.
func storeKey(tb testing.TB, msg proto.Message) string {
	tb.Helper()
	return keyOf(msg)
}

func keyOf(msg proto.Message) string {
	k, ok := resource.KindOf(msg)
	if !ok {
		panic(fmt.Sprintf("no kind for %T", msg))
	}
	return k.Key(resource.Name(msg))
}

// put writes msg and returns the event the store would emit.
func (t *memTx) put(tb testing.TB, msg proto.Message) store.Event {
	tb.Helper()
	b, err := proto.Marshal(msg)
	if err != nil {
		tb.Fatal(err)
	}
	t.rev++
	key := storeKey(tb, msg)
	t.data[key] = b
	return store.Event{Type: store.EventPut, KV: store.KV{Key: key, Value: b, ModRevision: t.rev}}
}

// putRaw writes an empty value at key (a gateway liveness marker).
func (t *memTx) putRaw(key string) store.Event {
	t.rev++
	t.data[key] = []byte{}
	return store.Event{Type: store.EventPut, KV: store.KV{Key: key, Value: []byte{}, ModRevision: t.rev}}
}

// putRawValue writes value at key (a backend health record).
func (t *memTx) putRawValue(key string, value []byte) store.Event {
	t.rev++
	t.data[key] = value
	return store.Event{Type: store.EventPut, KV: store.KV{Key: key, Value: value, ModRevision: t.rev}}
}

func (t *memTx) del(key string) (store.Event, bool) {
	old, ok := t.data[key]
	if !ok {
		return store.Event{}, false
	}
	t.rev++
	delete(t.data, key)
	return store.Event{Type: store.EventDelete, KV: store.KV{Key: key, Value: old, ModRevision: t.rev}}, true
}

func loadModel(tb testing.TB, tx store.ReadTx) *Model {
	tb.Helper()
	m := New(quiet())
	if err := m.Load(tx); err != nil {
		tb.Fatalf("Load: %v", err)
	}
	return m
}

func keysOf(state map[string]*agentv1.Object) []string {
	out := make([]string, 0, len(state))
	for k := range state {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Builders for the fixtures, with IDs filled as the API server would.
func vpc(name string, id uint32, cidrs ...string) *mv1.Vpc {
	return &mv1.Vpc{Name: name, Id: id, Vni: 1000 + id, CidrBlocks: cidrs}
}

func subnet(name string, id uint32, cidr, acl, rt string) *mv1.Subnet {
	return &mv1.Subnet{Name: name, Id: id, CidrBlock: cidr, NetworkAcl: acl, RouteTable: rt}
}

func port(name string, id uint32, sub, node string, ip string, sgs ...string) *mv1.Port {
	return &mv1.Port{
		Name: name, Id: id, Subnet: sub, Node: node, FixedIps: []string{ip},
		MacAddress: "02:00:00:00:00:01", SecurityGroups: sgs,
	}
}

func sg(name string, id uint32, vpc string, rules ...*mv1.SecurityGroupRule) *mv1.SecurityGroup {
	return &mv1.SecurityGroup{Name: name, Id: id, Vpc: vpc, Rules: rules}
}

func node(id, ip string) *mv1.Node {
	return &mv1.Node{Name: "nodes/" + id, UnderlayIp: ip}
}

func i32(v int32) *int32 { return &v }
