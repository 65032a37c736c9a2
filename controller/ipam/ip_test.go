package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/ipam/ipamtest"
	"github.com/meridian-sdn/meridian/controller/store"
)

func subnet(id, cidr, gw string) ipam.Subnet {
	s := ipam.Subnet{ID: id, CIDR: netip.MustParsePrefix(cidr)}
	if gw != "" {
		s.Gateway = netip.MustParseAddr(gw)
	}
	return s
}

// isReserved mirrors the documented rule independently of the implementation.
func isReserved(s ipam.Subnet, a netip.Addr) bool {
	p := s.CIDR.Masked()
	if a == p.Addr() || a == s.Gateway {
		return true
	}
	if a.Is4() {
		b := p.Addr().As4()
		host := 32 - p.Bits()
		n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		n |= uint32(uint64(1)<<host - 1)
		return a == netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	}
	return false
}

// allocateAll allocates until the subnet is exhausted (or max allocations)
// and returns the addresses in order.
func allocateAll(t *testing.T, tx store.Tx, s ipam.Subnet, max int) []netip.Addr {
	t.Helper()
	var got []netip.Addr
	for len(got) < max {
		a, err := ipam.AllocateIP(tx, s, "port")
		if errors.Is(err, ipam.ErrExhausted) {
			return got
		}
		if err != nil {
			t.Fatalf("AllocateIP #%d: %v", len(got)+1, err)
		}
		got = append(got, a)
	}
	return got
}

func TestAllocateIPNeverHandsOutReservedAddresses(t *testing.T) {
	tests := []struct {
		name       string
		s          ipam.Subnet
		wantUsable int    // -1: don't exhaust (huge subnet), allocate 2000
		wantFirst  string // "": none
	}{
		{"v4 /24 with gateway .1", subnet("a", "10.0.0.0/24", "10.0.0.1"), 253, "10.0.0.2"},
		{"v4 /24 without gateway", subnet("a", "10.0.0.0/24", ""), 254, "10.0.0.1"},
		{"v4 /29 gateway in the middle", subnet("a", "10.0.0.8/29", "10.0.0.12"), 5, "10.0.0.9"},
		{"v4 /30 with gateway", subnet("a", "192.168.1.4/30", "192.168.1.5"), 1, "192.168.1.6"},
		{"v4 /30 without gateway", subnet("a", "192.168.1.4/30", ""), 2, "192.168.1.5"},
		{"v4 /31 is exhausted, not misbehaving", subnet("a", "10.0.0.0/31", ""), 0, ""},
		{"v4 /31 with gateway is exhausted", subnet("a", "10.0.0.0/31", "10.0.0.1"), 0, ""},
		{"v4 /32 is exhausted", subnet("a", "10.0.0.7/32", ""), 0, ""},
		{"v4 /32 with gateway is exhausted", subnet("a", "10.0.0.7/32", "10.0.0.7"), 0, ""},
		{"unmasked CIDR is masked", subnet("a", "10.0.0.77/29", "10.0.0.73"), 5, "10.0.0.74"},
		{"v6 /120 has no broadcast", subnet("a", "fd00::/120", "fd00::1"), 254, "fd00::2"},
		{"v6 /127", subnet("a", "fd00::/127", ""), 1, "fd00::1"},
		{"v6 /128 is exhausted", subnet("a", "fd00::5/128", ""), 0, ""},
		{"v6 /64 walks forward", subnet("a", "fd00:1:2:3::/64", "fd00:1:2:3::1"), -1, "fd00:1:2:3::2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := ipamtest.NewTx()
			max := 1 << 20
			if tt.wantUsable < 0 {
				max = 2000
			}
			got := allocateAll(t, tx, tt.s, max)
			if tt.wantUsable >= 0 && len(got) != tt.wantUsable {
				t.Fatalf("allocated %d addresses before exhaustion, want %d: %v", len(got), tt.wantUsable, got)
			}
			if tt.wantUsable < 0 && len(got) != max {
				t.Fatalf("allocated %d addresses in a /64, want %d", len(got), max)
			}
			seen := map[netip.Addr]bool{}
			for _, a := range got {
				if !tt.s.CIDR.Masked().Contains(a) {
					t.Errorf("allocated %s outside %s", a, tt.s.CIDR)
				}
				if isReserved(tt.s, a) {
					t.Errorf("allocated reserved address %s", a)
				}
				if seen[a] {
					t.Errorf("allocated %s twice", a)
				}
				seen[a] = true
			}
			if tt.wantFirst != "" && (len(got) == 0 || got[0] != netip.MustParseAddr(tt.wantFirst)) {
				t.Errorf("first allocation = %v, want %s", got, tt.wantFirst)
			}
		})
	}
}

func TestExhaustionErrorNamesSubnet(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("web-subnet", "10.1.0.0/30", "10.1.0.1")
	if _, err := ipam.AllocateIP(tx, s, "p1"); err != nil {
		t.Fatal(err)
	}
	_, err := ipam.AllocateIP(tx, s, "p2")
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if !strings.Contains(err.Error(), "web-subnet") || !strings.Contains(err.Error(), "10.1.0.0/30") {
		t.Errorf("error %q does not name the subnet", err)
	}
}

func TestReserveIP(t *testing.T) {
	s := subnet("s", "10.0.0.0/24", "10.0.0.1")
	tests := []struct {
		name    string
		addr    string
		owner   string
		wantErr error
		wantMsg string
	}{
		{"free address succeeds", "10.0.0.50", "p2", nil, ""},
		{"same owner again is idempotent", "10.0.0.10", "p1", nil, ""},
		{"held by another owner", "10.0.0.10", "p2", ipam.ErrInUse, `"p1"`},
		{"outside the CIDR", "10.0.1.5", "p2", ipam.ErrOutside, ""},
		{"other family is outside", "fd00::5", "p2", ipam.ErrOutside, ""},
		{"network address", "10.0.0.0", "p2", ipam.ErrReserved, ""},
		{"gateway", "10.0.0.1", "p2", ipam.ErrReserved, ""},
		{"broadcast", "10.0.0.255", "p2", ipam.ErrReserved, ""},
		{"empty owner", "10.0.0.60", "", ipam.ErrInvalid, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := ipamtest.NewTx()
			if err := ipam.ReserveIP(tx, s, netip.MustParseAddr("10.0.0.10"), "p1"); err != nil {
				t.Fatal(err)
			}
			err := ipam.ReserveIP(tx, s, netip.MustParseAddr(tt.addr), tt.owner)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReserveIP(%s, %q) = %v, want %v", tt.addr, tt.owner, err, tt.wantErr)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %s", err, tt.wantMsg)
			}
			if tt.wantErr != nil {
				return
			}
			owner, ok, err := ipam.Owner(tx, s, netip.MustParseAddr(tt.addr))
			if err != nil || !ok || owner != tt.owner {
				t.Errorf("Owner = %q, %v, %v; want %q", owner, ok, err, tt.owner)
			}
		})
	}
}

func TestReleasedFixedIPCanBeReservedByAnotherOwner(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/24", "10.0.0.1")
	a := netip.MustParseAddr("10.0.0.10")
	if err := ipam.ReserveIP(tx, s, a, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := ipam.ReleaseIP(tx, s, a); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := ipam.Owner(tx, s, a); ok {
		t.Fatal("address still owned after release")
	}
	if err := ipam.ReleaseIP(tx, s, a); err != nil {
		t.Errorf("releasing a free address: %v, want nil (idempotent)", err)
	}
	if err := ipam.ReserveIP(tx, s, a, "p2"); err != nil {
		t.Fatalf("reserve after release: %v", err)
	}
	for _, bad := range []struct {
		addr string
		want error
	}{{"10.0.0.1", ipam.ErrReserved}, {"10.9.0.1", ipam.ErrOutside}} {
		if err := ipam.ReleaseIP(tx, s, netip.MustParseAddr(bad.addr)); !errors.Is(err, bad.want) {
			t.Errorf("ReleaseIP(%s) = %v, want %v", bad.addr, err, bad.want)
		}
	}
}

func TestAllocateIPSkipsFixedReservations(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/29", "10.0.0.1")
	if err := ipam.ReserveIP(tx, s, netip.MustParseAddr("10.0.0.3"), "fixed"); err != nil {
		t.Fatal(err)
	}
	got := allocateAll(t, tx, s, 100)
	want := []string{"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
	if len(got) != len(want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("allocated %v, want %v", got, want)
		}
	}
}

func TestCursorWrapsAndFindsFreedAddresses(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/29", "10.0.0.1") // usable .2-.6
	alloc := func(want string) {
		t.Helper()
		a, err := ipam.AllocateIP(tx, s, "p")
		if err != nil || a.String() != want {
			t.Fatalf("AllocateIP = %v, %v; want %s", a, err, want)
		}
	}
	release := func(a string) {
		t.Helper()
		if err := ipam.ReleaseIP(tx, s, netip.MustParseAddr(a)); err != nil {
			t.Fatal(err)
		}
	}
	alloc("10.0.0.2")
	alloc("10.0.0.3")
	alloc("10.0.0.4")
	release("10.0.0.2")
	alloc("10.0.0.5") // a freed address is not reused before the wrap
	alloc("10.0.0.6")
	alloc("10.0.0.2") // wrapped
	if _, err := ipam.AllocateIP(tx, s, "p"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("full subnet: err = %v, want ErrExhausted", err)
	}
	release("10.0.0.4")
	release("10.0.0.6")
	alloc("10.0.0.4") // cursor is at .2: forward to .4 first
	alloc("10.0.0.6")
	if _, err := ipam.AllocateIP(tx, s, "p"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("full subnet: err = %v, want ErrExhausted", err)
	}
}

func TestCursorWrapsInLargeSubnetAcrossIndexBlocks(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/22", "10.0.0.1") // 1021 usable over 4 index blocks
	got := allocateAll(t, tx, s, 1<<20)
	if len(got) != 1021 {
		t.Fatalf("allocated %d, want 1021", len(got))
	}
	// Free one address in each of two blocks, behind the cursor.
	for _, a := range []string{"10.0.1.7", "10.0.0.200"} {
		if err := ipam.ReleaseIP(tx, s, netip.MustParseAddr(a)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"10.0.0.200", "10.0.1.7"} {
		a, err := ipam.AllocateIP(tx, s, "p")
		if err != nil || a.String() != want {
			t.Fatalf("AllocateIP = %v, %v; want %s", a, err, want)
		}
	}
	if _, err := ipam.AllocateIP(tx, s, "p"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
}

func TestAllocationsCommitWithTheTransaction(t *testing.T) {
	st := ipamtest.NewStore()
	ctx := context.Background()
	s := subnet("s", "10.0.0.0/24", "10.0.0.1")
	var first, second netip.Addr
	if _, err := st.Update(ctx, func(tx store.Tx) (err error) {
		first, err = ipam.AllocateIP(tx, s, "p1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A transaction that fails after allocating must leave no trace.
	errAbort := errors.New("API validation failed")
	if _, err := st.Update(ctx, func(tx store.Tx) error {
		if _, err := ipam.AllocateIP(tx, s, "doomed"); err != nil {
			return err
		}
		return errAbort
	}); !errors.Is(err, errAbort) {
		t.Fatal(err)
	}
	if _, err := st.Update(ctx, func(tx store.Tx) (err error) {
		second, err = ipam.AllocateIP(tx, s, "p2")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if first.String() != "10.0.0.2" || second.String() != "10.0.0.3" {
		t.Errorf("allocations = %s, %s; want 10.0.0.2, 10.0.0.3 (aborted tx must not consume)", first, second)
	}
}

func TestSubnetsAreIsolatedByID(t *testing.T) {
	tx := ipamtest.NewTx()
	// Same CIDR in two VPCs, and an ID containing "/" that must not collide
	// with the key space of another subnet.
	ids := []string{"vpc1-sub", "vpc2-sub", "vpc1-sub/10.0.0.2"}
	for _, id := range ids {
		a, err := ipam.AllocateIP(tx, subnet(id, "10.0.0.0/24", "10.0.0.1"), id)
		if err != nil || a.String() != "10.0.0.2" {
			t.Fatalf("subnet %q: AllocateIP = %v, %v; want 10.0.0.2", id, a, err)
		}
	}
	for _, id := range ids {
		owner, ok, err := ipam.Owner(tx, subnet(id, "10.0.0.0/24", "10.0.0.1"), netip.MustParseAddr("10.0.0.2"))
		if err != nil || !ok || owner != id {
			t.Errorf("subnet %q: Owner = %q, %v, %v", id, owner, ok, err)
		}
	}
}

func TestInvalidSubnetsAreRefused(t *testing.T) {
	tests := []struct {
		name string
		s    ipam.Subnet
	}{
		{"empty ID", subnet("", "10.0.0.0/24", "")},
		{"zero CIDR", ipam.Subnet{ID: "s"}},
		{"IPv6 with more than 64 host bits", subnet("s", "fd00::/48", "")},
		{"gateway outside CIDR", subnet("s", "10.0.0.0/24", "10.0.1.1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := ipamtest.NewTx()
			if _, err := ipam.AllocateIP(tx, tt.s, "p"); !errors.Is(err, ipam.ErrInvalid) {
				t.Errorf("AllocateIP err = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := ipam.AllocateIP(ipamtest.NewTx(), subnet("s", "10.0.0.0/24", ""), ""); !errors.Is(err, ipam.ErrInvalid) {
		t.Errorf("empty owner: err = %v, want ErrInvalid", err)
	}
}

func TestDeleteSubnetRefusesWhileAddressesAreHeld(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/24", "10.0.0.1")
	a, err := ipam.AllocateIP(tx, s, "p")
	if err != nil {
		t.Fatal(err)
	}
	if err := ipam.DeleteSubnet(tx, "s"); !errors.Is(err, ipam.ErrInUse) {
		t.Fatalf("DeleteSubnet with held address: %v, want ErrInUse", err)
	}
	if err := ipam.ReleaseIP(tx, s, a); err != nil {
		t.Fatal(err)
	}
	if err := ipam.DeleteSubnet(tx, "s"); err != nil {
		t.Fatal(err)
	}
	if n, _ := tx.Count("ipam/"); n != 0 {
		kvs, _ := tx.List("ipam/", "", 0)
		t.Errorf("%d ipam keys left after DeleteSubnet: %v", n, kvs)
	}
	// A new subnet with the same ID starts from the beginning.
	if a, err := ipam.AllocateIP(tx, s, "p"); err != nil || a.String() != "10.0.0.2" {
		t.Errorf("AllocateIP after recreate = %v, %v; want 10.0.0.2", a, err)
	}
}

func TestIPv6CursorWrapsAtTheEndOfA64(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("v6", "fd00:1::/64", "fd00:1::1")
	// Park the cursor two addresses before the end of the /64: the walk must
	// cross the uint64 boundary correctly (no broadcast in IPv6) and wrap.
	if err := tx.Put("ipam/ipcursor/v6/v6", []byte("fd00:1::ffff:ffff:ffff:fffe")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fd00:1::ffff:ffff:ffff:ffff", "fd00:1::2", "fd00:1::3"} {
		a, err := ipam.AllocateIP(tx, s, "p")
		if err != nil || a.String() != want {
			t.Fatalf("AllocateIP = %v, %v; want %s", a, err, want)
		}
	}
}

func TestAllocateIPTrustsOwnerKeysOverAStaleIndex(t *testing.T) {
	tx := ipamtest.NewTx()
	s := subnet("s", "10.0.0.0/29", "10.0.0.1")
	// An owner key written without its index bit (e.g. by a bug or a manual
	// repair) must still never be handed out again.
	if err := tx.Put("ipam/ip/s/v4/10.0.0.2", []byte("legacy")); err != nil {
		t.Fatal(err)
	}
	a, err := ipam.AllocateIP(tx, s, "p")
	if err != nil || a.String() != "10.0.0.3" {
		t.Fatalf("AllocateIP = %v, %v; want 10.0.0.3", a, err)
	}
	if got := allocateAll(t, tx, s, 100); len(got) != 3 {
		t.Fatalf("remaining allocations %v, want .4 .5 .6", got)
	}
}

func TestDualStackSubnetSharesIDAcrossFamilies(t *testing.T) {
	tx := ipamtest.NewTx()
	v4 := subnet("dual", "10.0.0.0/29", "10.0.0.1")
	v6 := subnet("dual", "fd00::/64", "fd00::1")
	want := []string{"10.0.0.2", "fd00::2", "10.0.0.3", "fd00::3"}
	for i, w := range want {
		s := v4
		if i%2 == 1 {
			s = v6
		}
		a, err := ipam.AllocateIP(tx, s, "p")
		if err != nil || a.String() != w {
			t.Fatalf("AllocateIP = %v, %v; want %s", a, err, w)
		}
	}
	if used, _, err := ipam.Usage(tx, v4); err != nil || used != 2 {
		t.Errorf("v4 Usage used = %d, %v; want 2", used, err)
	}
	if err := ipam.DeleteSubnet(tx, "dual"); !errors.Is(err, ipam.ErrInUse) {
		t.Fatalf("DeleteSubnet with held addresses: %v, want ErrInUse", err)
	}
	for i, w := range want {
		s := v4
		if i%2 == 1 {
			s = v6
		}
		if err := ipam.ReleaseIP(tx, s, netip.MustParseAddr(w)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ipam.DeleteSubnet(tx, "dual"); err != nil {
		t.Fatal(err)
	}
	if kvs, _ := tx.List("ipam/", "", 0); len(kvs) != 0 {
		t.Errorf("ipam keys left after DeleteSubnet: %v", kvs)
	}
}

func TestUsageCountsUsableAddresses(t *testing.T) {
	tests := []struct {
		name   string
		s      ipam.Subnet
		usable uint64
	}{
		{"v4 /24 with gateway", subnet("s", "10.0.0.0/24", "10.0.0.1"), 253},
		{"v4 /24 without gateway", subnet("s", "10.0.0.0/24", ""), 254},
		{"v4 /16", subnet("s", "10.0.0.0/16", "10.0.0.1"), 65533},
		{"v4 /31", subnet("s", "10.0.0.0/31", "10.0.0.1"), 0},
		{"v4 /32", subnet("s", "10.0.0.0/32", ""), 0},
		{"v6 /120", subnet("s", "fd00::/120", "fd00::1"), 254},
		{"v6 /64", subnet("s", "fd00::/64", "fd00::1"), 1<<64 - 2},
		{"v6 /128", subnet("s", "fd00::/128", ""), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			used, usable, err := ipam.Usage(ipamtest.NewTx(), tt.s)
			if err != nil || used != 0 || usable != tt.usable {
				t.Errorf("Usage = %d, %d, %v; want 0, %d", used, usable, err, tt.usable)
			}
		})
	}
}
