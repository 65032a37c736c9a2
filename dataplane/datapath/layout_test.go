package datapath

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// TestLayoutsAgree checks the Go side of every map layout (the bpf2go
// types this package writes) against the compiled object: a stale
// generation or a hand edit on one side fails here, not in production.
func TestLayoutsAgree(t *testing.T) {
	spec, err := bpf.LoadMeridian()
	if err != nil {
		t.Fatal(err)
	}
	u64 := uint64(0)
	u32 := uint32(0)
	layouts := map[string]struct{ key, value any }{
		"ports":              {u32, bpf.MeridianPortInfo{}},
		"port_by_ifindex":    {u32, u32},
		"port_ips":           {bpf.MeridianPortIpKey{}, u32},
		"subnets":            {u32, bpf.MeridianSubnetInfo{}},
		"routes":             {bpf.MeridianRouteKey{}, bpf.MeridianRouteEntry{}},
		"conntrack":          {bpf.MeridianCtKey{}, bpf.MeridianCtEntry{}},
		"ct_stats":           {u32, u64},
		"ipcache_slots":      {u32, bpf.MeridianIpcacheSlot{}},
		"ipcache_vpcs":       {u32, bpf.MeridianIpcacheRange{}},
		"sg_policy":          {bpf.MeridianSgKey{}, bpf.MeridianSgValue{}},
		"sg_ports":           {bpf.MeridianSgPortKey{}, u32},
		"acl_metas":          {bpf.MeridianAclKey{}, bpf.MeridianAclMeta{}},
		"acl_intervals":      {bpf.MeridianAclIntervalKey{}, bpf.MeridianAclBitmap{}},
		"acl_proto":          {bpf.MeridianAclProtoKey{}, bpf.MeridianAclBitmap{}},
		"acl_rules":          {bpf.MeridianAclRuleKey{}, bpf.MeridianAclRule{}},
		"node_cfg":           {u32, bpf.MeridianNodeConfig{}},
		"drops":              {bpf.MeridianDropKey{}, u64},
		"egress":             {bpf.MeridianEgressKey{}, bpf.MeridianEgressEntry{}},
		"gateways":           {u32, bpf.MeridianGwSet{}},
		"eips":               {u32, bpf.MeridianEipEntry{}},
		"eip_by_private":     {bpf.MeridianEipRevKey{}, u32},
		"natgws":             {u32, bpf.MeridianNatgwInfo{}},
		"nat_src":            {bpf.MeridianEgressKey{}, u32},
		"nat_addrs":          {u32, u32},
		"port_maps":          {bpf.MeridianPortmapKey{}, bpf.MeridianPortmapEntry{}},
		"port_maps_rev":      {bpf.MeridianPortmapRevKey{}, bpf.MeridianPortmapKey{}},
		"nat":                {bpf.MeridianNatKey{}, bpf.MeridianNatEntry{}},
		"nat_exhausted":      {u32, u64},
		"nat_cfg":            {u32, bpf.MeridianNatConfig{}},
		"flowlog_cfgs":       {u32, bpf.MeridianFlowlogCfg{}},
		"flowlog_buckets":    {u32, bpf.MeridianFlowlogBucket{}},
		"flowlog_stats":      {u32, u64},
		"services":           {bpf.MeridianSvcKey{}, bpf.MeridianSvcInfo{}},
		"lb_tables":          {u32, u32},
		"lb_backends":        {bpf.MeridianLbBackendKey{}, bpf.MeridianLbBackend{}},
		"lb_local":           {bpf.MeridianLbLocalKey{}, bpf.MeridianLbBackend{}},
		"lb_flows":           {bpf.MeridianCtKey{}, bpf.MeridianLbFlow{}},
		"svc_addrs":          {bpf.MeridianSvcAddrKey{}, u32},
		"lt_filters":         {u32, ltFilter{}}, // livetrace.h
		"lt_buckets":         {u32, ltBucket{}},
		"lt_curs":            {u32, [4]uint32{}},
		".bss":               {u32, u32},         // lt_active
		".data.drop_capture": {u32, u32},         // meridian.c: drop captures running
		"drop_budgets":       {u32, [3]uint64{}}, // meridian.c: struct drop_budget
	}
	for name, m := range spec.Maps {
		if name == "drop_events" || name == "flow_events" || name == "lt_events" { // ring buffers: checked below
			continue
		}
		l, ok := layouts[name]
		if !ok {
			t.Errorf("map %s has no Go layout in this test", name)
			continue
		}
		if got := binary.Size(l.key); got != int(m.KeySize) {
			t.Errorf("map %s: Go key %T is %d bytes, C key %d", name, l.key, got, m.KeySize)
		}
		if got := binary.Size(l.value); got != int(m.ValueSize) {
			t.Errorf("map %s: Go value %T is %d bytes, C value %d", name, l.value, got, m.ValueSize)
		}
	}
	for name := range layouts {
		if spec.Maps[name] == nil {
			t.Errorf("layout for map %s, which the object lacks", name)
		}
	}

	sizeOf := func(name string) int {
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Fatalf("BTF of struct %s: %v", name, err)
		}
		return int(s.Size)
	}
	if got, want := binary.Size(bpf.MeridianDropEvent{}), sizeOf("drop_event"); got != want {
		t.Errorf("drop_event: Go %d bytes, C %d", got, want)
	}
	if got, want := binary.Size(ltEvent{}), sizeOf("lt_event"); got != want {
		t.Errorf("lt_event: Go %d bytes, C %d", got, want)
	}
	if got, want := binary.Size(bpf.MeridianFlowEvent{}), sizeOf("flow_event"); got != want {
		t.Errorf("flow_event: Go %d bytes, C %d", got, want)
	}
	if got, want := int(unsafe.Sizeof(fw.Bitmap{})), sizeOf("acl_bitmap"); got != want {
		t.Errorf("fw.Bitmap is %d bytes, acl_bitmap %d", got, want)
	}
	var sg bpf.MeridianSgValue
	if len(sg.Lo) != fw.MaxInlineSpans {
		t.Errorf("sg_value holds %d ranges, fw.MaxInlineSpans is %d", len(sg.Lo), fw.MaxInlineSpans)
	}
	var meta bpf.MeridianAclMeta
	if len(meta.IpStart) < 2*fw.MaxACLRules+1 {
		t.Errorf("acl_meta holds %d intervals, an ACL direction may need %d", len(meta.IpStart), 2*fw.MaxACLRules+1)
	}

	// The test-run context sets fields by index into struct __sk_buff.
	var skb *btf.Struct
	if err := spec.Types.TypeByName("__sk_buff", &skb); err != nil {
		t.Fatal(err)
	}
	if int(skb.Size) != int(unsafe.Sizeof(skbContext{})) {
		t.Errorf("__sk_buff is %d bytes, skbContext %d", skb.Size, unsafe.Sizeof(skbContext{}))
	}
	for _, mb := range skb.Members {
		want := map[string]int{"mark": skbMark, "ingress_ifindex": skbIngressIfindex}
		if idx, ok := want[mb.Name]; ok && int(mb.Offset.Bytes()) != idx*4 {
			t.Errorf("__sk_buff.%s at byte %d, skbContext uses word %d", mb.Name, mb.Offset.Bytes(), idx)
		}
	}
}
