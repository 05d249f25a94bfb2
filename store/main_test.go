package store

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"testing"
	"time"
)

// childDirEnv switches the test binary into the kill -9 writer (see
// crash_test.go) instead of running tests.
const childDirEnv = "DEVGATE_STORE_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		os.Exit(crashChild(dir, os.Getenv(childRoundEnv)))
	}
	os.Exit(m.Run())
}

// testTimeout bounds every test's store calls.
const testTimeout = 60 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newTestStore starts an embedded server in dir and opens the store on it.
func newTestStore(t testing.TB, dir string) (*Embedded, *Store) {
	t.Helper()
	e, err := StartEmbedded(dir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, err := e.Conn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s, err := Open(testCtx(t), nc, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return e, s
}

func quietLogf(string, ...any) {}

func newKey(testing.TB) string {
	var b [32]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}
