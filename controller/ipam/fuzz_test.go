package ipam_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/ipam/ipamtest"
)

// fuzzSubnets are small enough that sequences reach exhaustion and wrap.
var fuzzSubnets = []struct {
	s      ipam.Subnet
	usable int
}{
	{subnet("v4-28", "10.0.0.0/28", "10.0.0.1"), 13},
	{subnet("v4-30", "10.0.0.0/30", ""), 2},
	{subnet("v4-31", "10.0.0.0/31", "10.0.0.1"), 0},
	{subnet("v4-25-gw-mid", "10.0.0.0/25", "10.0.0.77"), 125},
	{subnet("v6-124", "fd00::/124", "fd00::1"), 14},
	{subnet("v6-64", "fd00::/64", "fd00::1"), -1}, // never exhausts
}

// fuzzAddr maps a byte to an address near the subnet, so some are outside.
func fuzzAddr(s ipam.Subnet, b byte) netip.Addr {
	base := s.CIDR.Masked().Addr()
	if base.Is4() {
		a := base.As4()
		a[3] = b
		return netip.AddrFrom4(a)
	}
	a := base.As16()
	a[15] = b
	return netip.AddrFrom16(a)
}

// FuzzIPAllocation runs random AllocateIP/ReserveIP/ReleaseIP sequences
// against a model and checks after every step: no address is owned twice,
// reserved addresses are never owned, every outcome is the one the model
// predicts, and the stored owners equal the model exactly.
//
//	go test -run '^$' -fuzz FuzzIPAllocation -fuzztime 30s ./controller/ipam/
func FuzzIPAllocation(f *testing.F) {
	f.Add(byte(0), []byte{0, 0, 0, 0, 2, 2, 0, 0})
	f.Add(byte(0), []byte{1, 5, 1, 5, 3, 5, 0, 0, 2, 5, 0, 0})
	f.Add(byte(1), []byte{0, 0, 0, 0, 0, 0, 2, 1, 0, 0})
	f.Add(byte(3), []byte{1, 77, 1, 0, 1, 127, 1, 200, 0, 0})
	f.Add(byte(4), []byte{0, 0, 1, 15, 2, 2, 0, 0})
	f.Fuzz(fuzzOne)
}

func fuzzOne(t *testing.T, which byte, ops []byte) {
	fs := fuzzSubnets[int(which)%len(fuzzSubnets)]
	s := fs.s
	tx := ipamtest.NewTx()
	model := map[netip.Addr]string{}
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i]%4, ops[i+1]
		owner := "o" + string(rune('a'+arg%3))
		switch op {
		case 0: // allocate
			a, err := ipam.AllocateIP(tx, s, owner)
			if errors.Is(err, ipam.ErrExhausted) {
				if fs.usable < 0 || len(model) != fs.usable {
					t.Fatalf("step %d: ErrExhausted with %d of %d held", i, len(model), fs.usable)
				}
				continue
			}
			if err != nil {
				t.Fatalf("step %d: AllocateIP: %v", i, err)
			}
			if prev, dup := model[a]; dup {
				t.Fatalf("step %d: allocated %s already owned by %s", i, a, prev)
			}
			if isReserved(s, a) || !s.CIDR.Contains(a) {
				t.Fatalf("step %d: allocated reserved or outside address %s", i, a)
			}
			model[a] = owner
		case 1, 3: // reserve a chosen address
			a := fuzzAddr(s, arg)
			err := ipam.ReserveIP(tx, s, a, owner)
			var want error
			switch prev, held := model[a]; {
			case !s.CIDR.Contains(a):
				want = ipam.ErrOutside
			case isReserved(s, a):
				want = ipam.ErrReserved
			case held && prev != owner:
				want = ipam.ErrInUse
			}
			if want == nil && err != nil || want != nil && !errors.Is(err, want) {
				t.Fatalf("step %d: ReserveIP(%s, %s) = %v, want %v", i, a, owner, err, want)
			}
			if err == nil {
				model[a] = owner
			}
		case 2: // release
			a := fuzzAddr(s, arg)
			err := ipam.ReleaseIP(tx, s, a)
			var want error
			switch {
			case !s.CIDR.Contains(a):
				want = ipam.ErrOutside
			case isReserved(s, a):
				want = ipam.ErrReserved
			}
			if want == nil && err != nil || want != nil && !errors.Is(err, want) {
				t.Fatalf("step %d: ReleaseIP(%s) = %v, want %v", i, a, err, want)
			}
			delete(model, a)
		}
	}
	// Stored state equals the model: one key per held address, right owner.
	fam := "v4/"
	if s.CIDR.Addr().Is6() {
		fam = "v6/"
	}
	kvs, err := tx.List("ipam/ip/"+s.ID+"/"+fam, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != len(model) {
		t.Fatalf("store holds %d addresses, model %d", len(kvs), len(model))
	}
	for _, kv := range kvs {
		a := netip.MustParseAddr(strings.TrimPrefix(kv.Key, "ipam/ip/"+s.ID+"/"+fam))
		if isReserved(s, a) {
			t.Fatalf("reserved address %s is owned by %s", a, kv.Value)
		}
		if model[a] != string(kv.Value) {
			t.Fatalf("%s owned by %q in store, %q in model", a, kv.Value, model[a])
		}
	}
	// The index agrees too: with the model full, allocation must fail;
	// otherwise it must succeed.
	_, err = ipam.AllocateIP(tx, s, "final")
	if full := fs.usable >= 0 && len(model) == fs.usable; full != errors.Is(err, ipam.ErrExhausted) || (!full && err != nil) {
		t.Fatalf("final AllocateIP with %d of %d held: %v", len(model), fs.usable, err)
	}
}
