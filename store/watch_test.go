package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// watchTimeout bounds the wait for one expected snapshot.
const watchTimeout = 20 * time.Second

func startWatch(t *testing.T, s *Store) <-chan *Snapshot {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	snaps := make(chan *Snapshot, 1000)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(sn *Snapshot) { snaps <- sn }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
		case <-time.After(watchTimeout):
			t.Error("Watch did not return after cancel")
		}
	})
	return snaps
}

// waitFor reads snapshots until cond holds.
func waitFor(t *testing.T, snaps <-chan *Snapshot, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	timeout := time.After(watchTimeout)
	for {
		select {
		case sn := <-snaps:
			if cond(sn) {
				return sn
			}
		case <-timeout:
			t.Fatalf("no snapshot with %s", what)
		}
	}
}

func TestWatch(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: DefaultOrg}); err != nil {
		t.Fatal(err)
	}
	snaps := startWatch(t, s)
	// The first call carries the state as it was.
	select {
	case first := <-snaps:
		if _, ok := first.Apps["hello"]; !ok || len(first.Orgs) != 1 {
			t.Fatalf("initial snapshot: apps %v orgs %v", first.Apps, first.Orgs)
		}
	case <-time.After(watchTimeout):
		t.Fatal("no initial snapshot")
	}

	p, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: "laptop", PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, snaps, "the new peer", func(sn *Snapshot) bool {
		ps := sn.PeersIn(NetworkKey{DefaultOrg, DefaultNetwork})
		return len(ps) == 1 && ps[0].Address == p.Address
	})
	ip, err := s.AllocateIP(ctx, "hello", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, snaps, "the new address", func(sn *Snapshot) bool { _, ok := sn.IP(ip.Address); return ok })

	if err := s.DeletePeer(ctx, DefaultOrg, "laptop"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, snaps, "the peer deleted", func(sn *Snapshot) bool { return len(sn.Peers) == 0 })
	if err := s.DeleteApp(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, snaps, "the app and its address deleted", func(sn *Snapshot) bool {
		_, ok := sn.IP(ip.Address)
		return len(sn.Apps) == 0 && !ok
	})
}

// TestWatchBurst: after a burst of writes, the last snapshot has all of
// them, however they were folded together.
func TestWatchBurst(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	snaps := startWatch(t, s)
	const n = 100
	for i := range n {
		if _, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("p%d", i), PublicKey: newKey(t)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, snaps, fmt.Sprintf("%d peers", n), func(sn *Snapshot) bool { return len(sn.Peers) == n })
}
