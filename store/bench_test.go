package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func BenchmarkCreatePeer(b *testing.B) {
	_, s := newTestStore(b, b.TempDir())
	ctx := testCtx(b)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("p%d", i), PublicKey: newKey(b)}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot10kPeers reads the whole state with 10,000 peers in it.
func BenchmarkSnapshot10kPeers(b *testing.B) {
	_, s := newTestStore(b, b.TempDir())
	// Creating 10,000 peers with an fsync per write takes most of a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		b.Fatal(err)
	}
	const peers, workers = 10000, 32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < peers; i += workers {
				if _, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("p%d", i), PublicKey: newKey(b)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		sn, err := s.Snapshot(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(sn.Peers) != peers {
			b.Fatalf("%d peers in snapshot", len(sn.Peers))
		}
	}
}
