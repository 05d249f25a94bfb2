package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	e, s := newTestStore(t, dir)
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	p, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: "laptop", PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: DefaultOrg, Config: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	ip, err := s.AllocateIP(ctx, "hello", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	e.Shutdown()
	e.Shutdown() // idempotent

	_, s2 := newTestStore(t, dir)
	got, err := s2.GetPeer(ctx, DefaultOrg, "laptop")
	if err != nil || got.Address != p.Address || got.PublicKey != p.PublicKey {
		t.Fatalf("peer after restart = %+v, %v", got, err)
	}
	a, err := s2.GetApp(ctx, "hello")
	if err != nil || string(a.Config) != "x" {
		t.Fatalf("app after restart = %+v, %v", a, err)
	}
	// Counters survived too: the next address is a new one.
	ip2, err := s2.AllocateIP(ctx, "hello", "", "", "")
	if err != nil || ip2.Address == ip.Address {
		t.Fatalf("address after restart = %v (before %v), %v", ip2.Address, ip.Address, err)
	}
}

func TestBadDataDir(t *testing.T) {
	t.Run("file where the directory should be", func(t *testing.T) {
		dir := t.TempDir()
		f := filepath.Join(dir, "nats")
		if err := os.WriteFile(f, []byte("not a directory"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := StartEmbedded(dir, t.Logf)
		checkDirErr(t, err, f)
		if b, _ := os.ReadFile(f); string(b) != "not a directory" {
			t.Fatal("the file was changed")
		}
	})
	t.Run("unreadable directory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads every directory")
		}
		dir := t.TempDir()
		d := filepath.Join(dir, "nats")
		if err := os.Mkdir(d, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(d, 0o700) })
		_, err := StartEmbedded(dir, t.Logf)
		checkDirErr(t, err, d)
	})
	// Garbage in the stream's metadata or in its message blocks: the start
	// fails, and the files as they were are kept in a damaged-copy
	// directory that the error names.
	for _, tc := range []struct{ name, file string }{
		{"garbage stream metadata", "meta.inf"},
		{"garbage message block", ".blk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			e, s := newTestStore(t, dir)
			if _, err := s.EnsureOrg(testCtx(t), DefaultOrg); err != nil {
				t.Fatal(err)
			}
			e.Shutdown()
			natsDir := filepath.Join(dir, "nats")
			var hit []string
			filepath.WalkDir(natsDir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.HasSuffix(p, tc.file) && strings.Contains(p, "KV_"+Bucket) && !strings.Contains(p, "obs") {
					hit = append(hit, p)
				}
				return nil
			})
			if len(hit) == 0 {
				t.Fatalf("no %s file found", tc.file)
			}
			for _, p := range hit {
				if err := os.WriteFile(p, []byte(strings.Repeat("\x00garbage{{{", 50)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := hashTree(t, natsDir)
			_, err := StartEmbedded(dir, t.Logf)
			checkDirErr(t, err, natsDir)
			kept, _ := filepath.Glob(filepath.Join(dir, damagedPrefix+"*"))
			if len(kept) != 1 || !strings.Contains(err.Error(), kept[0]) {
				t.Fatalf("damaged copies %v, error %v", kept, err)
			}
			if got := hashTree(t, kept[0]); !equalMaps(before, got) {
				t.Fatalf("the kept copy differs from the files before the start:\nbefore %v\nkept   %v", before, got)
			}
			// A second start must not overwrite the kept copy.
			if e2, err := StartEmbedded(dir, quietLogf); err == nil {
				e2.Shutdown()
			}
			if got := hashTree(t, kept[0]); !equalMaps(before, got) {
				t.Fatal("a second start changed the kept copy")
			}
		})
	}
	t.Run("empty dir", func(t *testing.T) {
		if _, err := StartEmbedded("", t.Logf); err == nil {
			t.Fatal("started without a directory")
		}
	})
}

func checkDirErr(t *testing.T, err error, path string) {
	t.Helper()
	if err == nil {
		t.Fatal("started on a bad data directory")
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "restore it from a backup") {
		t.Fatalf("error %q does not name %s and say what to do", err, path)
	}
}

func hashTree(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		out[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalMaps(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestExternalNATS reaches the server over real TCP through Connect, and
// checks that writes fail with ErrUnavailable, in bounded time, once the
// server is gone.
func TestExternalNATS(t *testing.T) {
	e, err := startEmbedded(t.TempDir(), t.Logf, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	url := e.clientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("client URL %q", url)
	}
	nc, err := Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx := testCtx(t)
	s, err := Open(ctx, nc, Options{Gateway: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	p, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: "laptop", PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if b := p.Address.As16(); b[8] != 0 || b[9] != 2 {
		t.Fatalf("peer address %v does not carry gateway 2", p.Address)
	}

	e.Shutdown()
	// The client now reconnects forever; a write must still fail, with
	// ErrUnavailable, once opTimeout has passed (the outer bound is only a
	// guard against hanging).
	done := make(chan error, 1)
	go func() {
		_, err := s.CreateOrg(context.Background(), "acme")
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("error: %v", err)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("write with NATS down = %v, want ErrUnavailable", err)
		}
	case <-time.After(4 * opTimeout):
		t.Fatal("write with NATS down did not return")
	}
	if _, err := Connect(url); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Connect to a stopped server = %v, want ErrUnavailable", err)
	}
}

// TestEmbeddedUnavailable: with the embedded server shut down, writes
// through its in-process connection fail with ErrUnavailable.
// A running Watch ends with ErrUnavailable too.
func TestEmbeddedUnavailable(t *testing.T) {
	e, s := newTestStore(t, t.TempDir())
	started := make(chan struct{})
	werr := make(chan error, 1)
	var once sync.Once
	go func() {
		werr <- s.Watch(testCtx(t), func(*Snapshot) { once.Do(func() { close(started) }) })
	}()
	select {
	case <-started:
	case <-time.After(watchTimeout):
		t.Fatal("no initial snapshot")
	}
	e.Shutdown()
	_, err := s.CreateOrg(testCtx(t), "acme")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write with server down = %v, want ErrUnavailable", err)
	}
	select {
	case err := <-werr:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Watch with server down = %v, want ErrUnavailable", err)
		}
	case <-time.After(watchTimeout):
		t.Fatal("Watch did not return after the server stopped")
	}
}

// TestNoGoroutineLeak: after the store and server are closed, the
// goroutines they started are gone.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	e, err := StartEmbedded(t.TempDir(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := e.Conn()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	s, err := Open(ctx, nc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() { werr <- s.Watch(wctx, func(*Snapshot) { cancel() }) }()
	if err := <-werr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch = %v", err)
	}
	nc.Close()
	e.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
