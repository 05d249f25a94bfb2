package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// drainTimeout bounds how long a stopped watcher is drained. nats.go's
// watcher callback holds a lock while it sends on the updates channel, so a
// stopped watcher must be read until closed or its goroutine would block.
const drainTimeout = 5 * time.Second

// scan calls fn for the current value of every live key matching one of
// filters (NATS subject patterns relative to the bucket).
func (s *Store) scan(ctx context.Context, fn func(key string, val []byte) error, filters ...string) error {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	filter := strings.Join(filters, ",")
	// WatchFiltered rewrites the slice it is given in place.
	w, err := s.kv.WatchFiltered(octx, slices.Clone(filters), jetstream.IgnoreDeletes())
	if err != nil {
		return s.fail(ctx, "list "+filter, err)
	}
	defer stopWatcher(w)
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return s.fail(ctx, "list "+filter, fmt.Errorf("watcher closed: %w", octx.Err()))
			}
			if e == nil {
				return nil
			}
			if err := fn(e.Key(), e.Value()); err != nil {
				return err
			}
		case <-octx.Done():
			return s.fail(ctx, "list "+filter, octx.Err())
		}
	}
}

func stopWatcher(w jetstream.KeyWatcher) {
	if err := w.Stop(); err != nil {
		return // already closed: the channel is closed too
	}
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	for {
		select {
		case _, ok := <-w.Updates():
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

// state is the decoded content of the bucket, keyed by bucket key.
type state struct {
	orgs     map[string]Org
	networks map[string]Network
	peers    map[string]Peer
	apps     map[string]App
	ips      map[string]IP
	machines map[string]Machine
}

func newState() *state {
	return &state{
		orgs: map[string]Org{}, networks: map[string]Network{}, peers: map[string]Peer{},
		apps: map[string]App{}, ips: map[string]IP{}, machines: map[string]Machine{},
	}
}

// apply records the value of key (nil val: deleted). Keys that are not
// records (counters, public-key claims) are ignored.
func (st *state) apply(key string, val []byte) error {
	switch {
	case strings.HasPrefix(key, pfxOrg):
		return applyTo(st.orgs, key, val)
	case strings.HasPrefix(key, pfxNet):
		return applyTo(st.networks, key, val)
	case strings.HasPrefix(key, pfxPeer):
		return applyTo(st.peers, key, val)
	case strings.HasPrefix(key, pfxApp):
		return applyTo(st.apps, key, val)
	case strings.HasPrefix(key, pfxIP):
		return applyTo(st.ips, key, val)
	case strings.HasPrefix(key, pfxMachine):
		return applyTo(st.machines, key, val)
	}
	return nil
}

func applyTo[T any](m map[string]T, key string, val []byte) error {
	if val == nil {
		delete(m, key)
		return nil
	}
	var v T
	if err := json.Unmarshal(val, &v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	m[key] = v
	return nil
}

func values[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func (st *state) snapshot() *Snapshot {
	return NewSnapshot(values(st.orgs), values(st.networks), values(st.peers),
		values(st.apps), values(st.ips), values(st.machines))
}

// Snapshot reads all state.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	st := newState()
	// One filter for everything: a consumer with several filters (records
	// only, without counters and key claims) measured 15x slower.
	err := s.scan(ctx, func(key string, val []byte) error {
		if val == nil {
			val = []byte{} // a record is never empty; make decoding fail loudly
		}
		return st.apply(key, val)
	}, ">")
	if err != nil {
		return nil, err
	}
	return st.snapshot(), nil
}

// Watch calls fn with a full snapshot once the current state has been read,
// and again after every change. Changes that arrive together may be folded
// into one call, but the snapshot passed after a change always includes it.
// fn is called from one goroutine, in order; while it runs, changes queue.
// Watch returns ctx.Err() when ctx ends, or an error (ErrUnavailable) if the
// store becomes unreachable in a way the client cannot recover from.
func (s *Store) Watch(ctx context.Context, fn func(*Snapshot)) error {
	for {
		err := s.watchOnce(ctx, fn)
		if !errors.Is(err, errReconnected) {
			return err
		}
		s.logf("store: connection to NATS is back; reloading state")
	}
}

// errReconnected ends one watch when the connection came back, so Watch
// starts a new one from a full replay (which also catches deletes that
// happened while it was away).
var errReconnected = errors.New("reconnected")

func (s *Store) watchOnce(ctx context.Context, fn func(*Snapshot)) error {
	s.reconnectMu.Lock()
	reconnected := s.reconnects
	s.reconnectMu.Unlock()
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return s.fail(ctx, "watch state", err)
	}
	defer stopWatcher(w)
	st := newState()
	ready := false
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
		case <-reconnected:
			return errReconnected
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch state: %w (the watcher was closed)", ErrUnavailable)
		}
		if e == nil {
			ready = true
		} else {
			s.applyEntry(st, e)
		}
		if !ready {
			continue
		}
		// Fold in whatever else is already queued, then publish once.
	drain:
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					break drain // reported on the next turn
				}
				if e != nil {
					s.applyEntry(st, e)
				}
			default:
				break drain
			}
		}
		fn(st.snapshot())
	}
}

func (s *Store) applyEntry(st *state, e jetstream.KeyValueEntry) {
	val := e.Value()
	if e.Operation() != jetstream.KeyValuePut {
		val = nil
	} else if val == nil {
		val = []byte{}
	}
	if err := st.apply(e.Key(), val); err != nil {
		// A record this version cannot read is skipped rather than stopping
		// every watcher; it is logged so it can be repaired.
		s.logf("store: watch: skipping record: %v", err)
	}
}
