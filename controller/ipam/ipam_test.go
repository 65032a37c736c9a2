package ipam_test

import (
	"errors"
	"net"
	"strconv"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/ipam/ipamtest"
)

func TestAllocateMACIsUniqueLocalUnicastUnderPrefix(t *testing.T) {
	tx := ipamtest.NewTx()
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		mac, err := ipam.AllocateMAC(tx, "port"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if len(mac) != 6 || mac[0] != 0x02 || mac[1] != 0x4d || mac[2] != 0x52 {
			t.Fatalf("MAC %s not under 02:4d:52", mac)
		}
		if mac[0]&1 != 0 || mac[0]&2 == 0 {
			t.Fatalf("MAC %s is not locally administered unicast", mac)
		}
		if seen[mac.String()] {
			t.Fatalf("MAC %s allocated twice", mac)
		}
		seen[mac.String()] = true
	}
}

func TestAllocateMACSkipsReservedMACs(t *testing.T) {
	tx := ipamtest.NewTx()
	for _, m := range []string{"02:4d:52:00:00:00", "02:4d:52:00:00:01"} {
		if err := ipam.ReserveMAC(tx, mustMAC(m), "fixed"); err != nil {
			t.Fatal(err)
		}
	}
	mac, err := ipam.AllocateMAC(tx, "p")
	if err != nil || mac.String() != "02:4d:52:00:00:02" {
		t.Fatalf("AllocateMAC = %v, %v; want 02:4d:52:00:00:02", mac, err)
	}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestReserveMAC(t *testing.T) {
	tests := []struct {
		name    string
		mac     net.HardwareAddr
		owner   string
		wantErr error
	}{
		{"vendor unicast MAC is accepted", mustMAC("00:16:3e:12:34:56"), "p2", nil},
		{"same owner again is idempotent", mustMAC("02:aa:00:00:00:01"), "p1", nil},
		{"held by another owner", mustMAC("02:aa:00:00:00:01"), "p2", ipam.ErrInUse},
		{"held, different spelling", mustMAC("02-AA-00-00-00-01"), "p2", ipam.ErrInUse},
		{"multicast", mustMAC("01:00:5e:00:00:01"), "p2", ipam.ErrInvalidMAC},
		{"broadcast", mustMAC("ff:ff:ff:ff:ff:ff"), "p2", ipam.ErrInvalidMAC},
		{"all zero", mustMAC("00:00:00:00:00:00"), "p2", ipam.ErrInvalidMAC},
		{"EUI-64 is not a port MAC", mustMAC("02:00:00:00:00:00:00:01"), "p2", ipam.ErrInvalidMAC},
		{"empty", nil, "p2", ipam.ErrInvalidMAC},
		{"empty owner", mustMAC("02:aa:00:00:00:09"), "", ipam.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := ipamtest.NewTx()
			if err := ipam.ReserveMAC(tx, mustMAC("02:aa:00:00:00:01"), "p1"); err != nil {
				t.Fatal(err)
			}
			err := ipam.ReserveMAC(tx, tt.mac, tt.owner)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReserveMAC(%s, %q) = %v, want %v", tt.mac, tt.owner, err, tt.wantErr)
			}
		})
	}
}

func TestReleasedMACCanBeReservedAgain(t *testing.T) {
	tx := ipamtest.NewTx()
	mac, err := ipam.AllocateMAC(tx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ipam.ReserveMAC(tx, mac, "p2"); !errors.Is(err, ipam.ErrInUse) {
		t.Fatalf("reserve allocated MAC: %v, want ErrInUse", err)
	}
	if err := ipam.ReleaseMAC(tx, mac); err != nil {
		t.Fatal(err)
	}
	if err := ipam.ReserveMAC(tx, mac, "p2"); err != nil {
		t.Fatalf("reserve released MAC: %v", err)
	}
	if err := ipam.ReleaseMAC(tx, mustMAC("01:00:5e:00:00:01")); !errors.Is(err, ipam.ErrInvalidMAC) {
		t.Errorf("release multicast MAC: %v, want ErrInvalidMAC", err)
	}
}

func TestAllocateVNIStaysInRangeAndNeverUsesZero(t *testing.T) {
	tx := ipamtest.NewTx()
	v, err := ipam.AllocateVNI(tx, "vpc-a")
	if err != nil || v != 1 {
		t.Fatalf("first VNI = %d, %v; want 1", v, err)
	}
	// Jump the cursor to the top of the range to exercise the wrap.
	if err := tx.Put("ipam/vnicursor", []byte(strconv.Itoa(ipam.VNIMax-1))); err != nil {
		t.Fatal(err)
	}
	want := []uint32{ipam.VNIMax, 2, 3} // 1 is held, 0 is never used
	for _, w := range want {
		v, err := ipam.AllocateVNI(tx, "vpc")
		if err != nil || v != w {
			t.Fatalf("AllocateVNI = %d, %v; want %d", v, err, w)
		}
	}
	for _, bad := range []uint32{0, ipam.VNIMax + 1} {
		if err := ipam.ReleaseVNI(tx, bad); !errors.Is(err, ipam.ErrOutside) {
			t.Errorf("ReleaseVNI(%d) = %v, want ErrOutside", bad, err)
		}
	}
}

func TestReleasedVNIIsReusedOnlyAfterWrap(t *testing.T) {
	tx := ipamtest.NewTx()
	for want := uint32(1); want <= 3; want++ {
		if v, err := ipam.AllocateVNI(tx, "vpc"); err != nil || v != want {
			t.Fatalf("AllocateVNI = %d, %v; want %d", v, err, want)
		}
	}
	if err := ipam.ReleaseVNI(tx, 2); err != nil {
		t.Fatal(err)
	}
	if v, err := ipam.AllocateVNI(tx, "vpc"); err != nil || v != 4 {
		t.Fatalf("AllocateVNI after release = %d, %v; want 4 (no immediate reuse)", v, err)
	}
	if err := tx.Put("ipam/vnicursor", []byte(strconv.Itoa(ipam.VNIMax))); err != nil {
		t.Fatal(err)
	}
	if v, err := ipam.AllocateVNI(tx, "vpc"); err != nil || v != 2 {
		t.Fatalf("AllocateVNI after wrap = %d, %v; want released 2", v, err)
	}
}

func TestNextIDIsMonotonicPerKindAndNeverReused(t *testing.T) {
	tx := ipamtest.NewTx()
	last := map[string]uint32{}
	kinds := []string{"port", "sg", "rule", "acl"}
	for i := 0; i < 1000; i++ {
		k := kinds[i%len(kinds)]
		id, err := ipam.NextID(tx, k)
		if err != nil {
			t.Fatal(err)
		}
		if id != last[k]+1 {
			t.Fatalf("NextID(%s) = %d after %d, want %d", k, id, last[k], last[k]+1)
		}
		last[k] = id
	}
	if _, err := ipam.NextID(tx, ""); !errors.Is(err, ipam.ErrInvalid) {
		t.Errorf("empty kind: %v, want ErrInvalid", err)
	}
}

func TestNextIDReportsExhaustion(t *testing.T) {
	tx := ipamtest.NewTx()
	if err := tx.Put("ipam/id/rule", []byte("4294967294")); err != nil {
		t.Fatal(err)
	}
	if id, err := ipam.NextID(tx, "rule"); err != nil || id != 1<<32-1 {
		t.Fatalf("NextID = %d, %v; want %d", id, err, uint32(1<<32-1))
	}
	if id, err := ipam.NextID(tx, "rule"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("NextID past max = %d, %v; want ErrExhausted", id, err)
	}
}
