package store

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/devgate/devgate/peers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors for errors.Is.
var (
	// ErrExists: a record with that name (or address, or key) already exists.
	ErrExists = errors.New("already exists")
	// ErrNotFound: the record, or one it refers to, does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the state store (NATS) cannot be reached.
	ErrUnavailable = errors.New("state store unreachable")
	// ErrInvalid: a name or key the caller must change.
	ErrInvalid = errors.New("invalid")
)

// Bucket is the name of the key-value bucket that holds all state.
const Bucket = "devgate"

// opTimeout bounds one store operation when the caller's context has no
// deadline. A NATS client that lost its server buffers requests and waits;
// without a bound a write would hang instead of failing with ErrUnavailable.
const opTimeout = 5 * time.Second

// maxCASAttempts bounds a compare-and-swap loop. Each failed attempt means
// another writer got in first, so hitting this takes sustained contention on
// one key; the caller gets an error rather than a livelock.
const maxCASAttempts = 1000

// Key layout. Every name is ValidateName-checked (lowercase letters, digits,
// hyphens), so it is a safe NATS subject token; addresses and public keys,
// which contain ':' '+' '/' '=', are hex-encoded.
const (
	pfxOrg     = "org."     // org.<org>
	pfxNet     = "net."     // net.<org>.<network>
	pfxPeer    = "peer."    // peer.<org>.<name>
	pfxPeerKey = "peerkey." // peerkey.<hex public key> -> claim of that key
	pfxApp     = "app."     // app.<name>
	pfxIP      = "ip."      // ip.<hex address>
	pfxMachine = "machine." // machine.<id>
	pfxCounter = "counter." // counter.<what>[.<org>.<network>]
)

func keyOrg(org string) string          { return pfxOrg + org }
func keyNet(org, network string) string { return pfxNet + org + "." + network }
func keyPeer(org, name string) string   { return pfxPeer + org + "." + name }
func keyPeerKey(pub string) string      { return pfxPeerKey + hex.EncodeToString([]byte(pub)) }
func keyApp(name string) string         { return pfxApp + name }
func keyIP(a netip.Addr) string         { return pfxIP + hex.EncodeToString(a.AsSlice()) }
func keyMachine(id string) string       { return pfxMachine + id }
func keyCounter(what string) string     { return pfxCounter + what }
func keyNetCounter(what string, n Network) string {
	return pfxCounter + what + "." + n.Org + "." + n.Name
}

// Options configure Open.
type Options struct {
	// Gateway is this gateway's number (1..peers.MaxGateway), part of every
	// peer and machine address it allocates. Default 1.
	Gateway uint16
	// Logf receives diagnostics. Default: discard.
	Logf func(format string, args ...any)
}

// Store is the state store. It is safe for concurrent use.
type Store struct {
	// reconnects is closed and replaced each time the connection to NATS
	// comes back, so watchers start over from a full replay.
	reconnectMu sync.Mutex
	reconnects  chan struct{}

	nc   *nats.Conn
	kv   jetstream.KeyValue
	gw   uint16
	logf func(string, ...any)
	now  func() time.Time
}

// Open opens (creating if needed) the state bucket on nc. The bucket lives
// in file storage with one replica; on a cluster, create it beforehand with
// more replicas and Open uses it as it is. The caller keeps ownership of nc
// and closes it after it is done with the Store; a Store needs no Close.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	if opts.Gateway == 0 {
		opts.Gateway = 1
	}
	if opts.Gateway > peers.MaxGateway {
		return nil, fmt.Errorf("open state store: gateway number %d above %d", opts.Gateway, peers.MaxGateway)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	s := &Store{nc: nc, gw: opts.Gateway, logf: opts.Logf, now: func() time.Time { return time.Now().UTC() }, reconnects: make(chan struct{})}
	// A watcher's consumer does not survive a lost connection promptly (it
	// is re-created only after missed heartbeats, ~14 s); tell watchers at
	// once instead. This takes the connection's reconnect handler, which
	// Connect leaves unset.
	nc.SetReconnectHandler(func(*nats.Conn) {
		s.reconnectMu.Lock()
		close(s.reconnects)
		s.reconnects = make(chan struct{})
		s.reconnectMu.Unlock()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("open state store: %w", err)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	kv, err := js.KeyValue(octx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(octx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Description: "devgate state",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    1,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			// Another gateway created it between our two calls.
			kv, err = js.KeyValue(octx, Bucket)
		}
	}
	if err != nil {
		return nil, s.fail(ctx, "open state bucket", err)
	}
	s.kv = kv
	return s, nil
}

// opCtx applies opTimeout unless ctx already has a deadline.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, opTimeout)
}

// fail wraps err with what was being done, and marks it ErrUnavailable when
// it means NATS could not be reached (rather than the caller giving up).
func (s *Store) fail(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if unreachable(err) {
		return fmt.Errorf("%s: %w (%v); check that NATS is running and reachable", what, ErrUnavailable, err)
	}
	if errors.Is(err, jetstream.ErrInvalidKey) {
		// A lookup by a name that ValidateName would refuse: the caller's
		// mistake, not the store's.
		return fmt.Errorf("%w name in %q: use lowercase letters, digits and hyphens", ErrInvalid, what)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func unreachable(err error) bool {
	for _, e := range []error{
		context.DeadlineExceeded, nats.ErrTimeout, nats.ErrConnectionClosed,
		nats.ErrNoResponders, nats.ErrNoServers, nats.ErrDisconnected,
		nats.ErrConnectionDraining, nats.ErrConnectionReconnecting,
		jetstream.ErrNoStreamResponse, jetstream.ErrJetStreamNotEnabled,
		ErrUnavailable,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// get reads and decodes one record. ok is false if it does not exist.
func (s *Store) get(ctx context.Context, key string, v any) (rev uint64, ok bool, err error) {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	e, err := s.kv.Get(octx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, s.fail(ctx, "read "+key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, false, fmt.Errorf("decode %s (revision %d): %w", key, e.Revision(), err)
	}
	return e.Revision(), true, nil
}

// create writes v under key only if key does not exist (or was deleted).
// It returns ErrExists if it does.
func (s *Store) create(ctx context.Context, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", key, err)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	rev, err := s.kv.Create(octx, key, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, ErrExists
	}
	return rev, s.fail(ctx, "write "+key, err)
}

// errConflict: the record changed since it was read; read it again.
var errConflict = errors.New("revision conflict")

// update writes v under key only if key is still at revision rev.
func (s *Store) update(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", key, err)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	nrev, err := s.kv.Update(octx, key, b, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errConflict
	}
	return nrev, s.fail(ctx, "write "+key, err)
}

// del deletes key if it is still at revision rev (rev 0: unconditionally).
func (s *Store) del(ctx context.Context, key string, rev uint64) error {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	var opts []jetstream.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err := s.kv.Delete(octx, key, opts...)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return errConflict
	}
	return s.fail(ctx, "delete "+key, err)
}

// modify is the compare-and-swap loop behind every read-modify-write: read
// key into a fresh T, apply fn, write back only if nobody wrote in between,
// and retry otherwise. ErrNotFound if key does not exist.
func modify[T any](ctx context.Context, s *Store, key string, fn func(*T) error) (T, error) {
	var zero T
	for range maxCASAttempts {
		var v T
		rev, ok, err := s.get(ctx, key, &v)
		if err != nil {
			return zero, err
		}
		if !ok {
			return zero, ErrNotFound
		}
		if err := fn(&v); err != nil {
			return zero, err
		}
		_, err = s.update(ctx, key, &v, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return zero, err
		}
		return v, nil
	}
	return zero, fmt.Errorf("update %s: gave up after %d conflicting writes", key, maxCASAttempts)
}

// next allocates the next number of a counter: 1, 2, 3, ... Numbers are
// never reused, even when the write that wanted one fails afterwards.
func (s *Store) next(ctx context.Context, key string) (uint64, error) {
	for range maxCASAttempts {
		var n uint64
		rev, ok, err := s.getCounter(ctx, key, &n)
		if err != nil {
			return 0, err
		}
		if !ok {
			if _, err := s.createRaw(ctx, key, "1"); errors.Is(err, ErrExists) {
				continue
			} else if err != nil {
				return 0, err
			}
			return 1, nil
		}
		_, err = s.update(ctx, key, json.RawMessage(strconv.FormatUint(n+1, 10)), rev)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n + 1, nil
	}
	return 0, fmt.Errorf("allocate from %s: gave up after %d conflicting writes", key, maxCASAttempts)
}

func (s *Store) getCounter(ctx context.Context, key string, n *uint64) (uint64, bool, error) {
	return s.get(ctx, key, n)
}

func (s *Store) createRaw(ctx context.Context, key, val string) (uint64, error) {
	return s.create(ctx, key, json.RawMessage(val))
}

// list decodes every live record whose key starts with prefix.
func list[T any](ctx context.Context, s *Store, prefix string) ([]T, error) {
	var out []T
	err := s.scan(ctx, func(key string, val []byte) error {
		var v T
		if err := json.Unmarshal(val, &v); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		out = append(out, v)
		return nil
	}, prefix+">")
	return out, err
}
