package store

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

// TestConcurrentSamePeerName: of 20 concurrent creates of one name,
// exactly one wins.
func TestConcurrentSamePeerName(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: "same", PublicKey: newKey(t)})
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrExists):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d creates of one name succeeded, want 1", wins)
	}
	// The losers released their key claims: only the winner's key is held.
	ps, err := s.ListPeers(ctx, DefaultOrg)
	if err != nil || len(ps) != 1 {
		t.Fatalf("ListPeers = %v, %v", ps, err)
	}
}

// TestConcurrentSamePublicKey: of 20 concurrent creates with one key and
// distinct names, exactly one wins.
func TestConcurrentSamePublicKey(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("p%d", i), PublicKey: key})
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		if err == nil {
			wins++
		} else if !errors.Is(err, ErrExists) {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d peers got one public key, want 1", wins)
	}
}

func TestConcurrentAllocateIP(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: DefaultOrg}); err != nil {
		t.Fatal(err)
	}
	const n = 50
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var ip IP
			ip, errs[i] = s.AllocateIP(ctx, "hello", "", "", "ams")
			addrs[i] = ip.Address
		})
	}
	wg.Wait()
	checkDistinct(t, addrs, errs)
	ips, err := s.ListIPs(ctx, "hello")
	if err != nil || len(ips) != n {
		t.Fatalf("ListIPs: %d, %v", len(ips), err)
	}
}

func TestConcurrentCreatePeer(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	const n = 50
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var p Peer
			p, errs[i] = s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("p%d", i), PublicKey: newKey(t)})
			addrs[i] = p.Address
		})
	}
	wg.Wait()
	checkDistinct(t, addrs, errs)
}

func TestConcurrentNetworksAndMachines(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: DefaultOrg}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	nets := make([]netip.Addr, n)
	machs := make([]netip.Addr, n)
	nerrs := make([]error, n)
	merrs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var nw Network
			nw, nerrs[i] = s.CreateNetwork(ctx, DefaultOrg, fmt.Sprintf("n%d", i))
			nets[i] = nw.Prefix.Addr()
		})
		wg.Go(func() {
			var m Machine
			m, merrs[i] = s.CreateMachine(ctx, Machine{App: "hello"})
			machs[i] = m.Address
		})
	}
	wg.Wait()
	checkDistinct(t, nets, nerrs)
	checkDistinct(t, machs, merrs)
}

func checkDistinct(t *testing.T, addrs []netip.Addr, errs []error) {
	t.Helper()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Errorf("#%d: %v", i, errs[i])
			continue
		}
		if j, dup := seen[a]; dup {
			t.Errorf("#%d and #%d both got %v", i, j, a)
		}
		seen[a] = i
	}
}
