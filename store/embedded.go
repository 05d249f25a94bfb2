package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startTimeout bounds how long StartEmbedded waits for the server (and the
// recovery of its JetStream files) before giving up.
const startTimeout = 60 * time.Second

// connectTimeout bounds the initial dial of an external NATS server.
const connectTimeout = 10 * time.Second

// natsSubdir is where, under the data directory, the embedded server keeps
// its JetStream files.
const natsSubdir = "nats"

// Embedded is a NATS server running inside this process with JetStream file
// storage. It listens on no TCP port: clients reach it through Conn.
type Embedded struct {
	srv  *server.Server
	dir  string
	logf func(string, ...any)
	once sync.Once
}

// StartEmbedded starts a NATS server with JetStream storage under
// dir/nats. Every write is synced to disk before it is acknowledged, so an
// acknowledged write survives a crash or kill -9. The directory is created if
// it does not exist; an existing directory that cannot be read, or that holds
// data the server cannot load, is an error naming the path and saying what to
// do. State is never re-initialised: before the server starts, its files are
// copied to dir/nats-prestart, and if the server then shows signs of having
// dropped damaged data, that copy is kept as dir/nats-damaged-<time>.
func StartEmbedded(dir string, logf func(string, ...any)) (*Embedded, error) {
	return startEmbedded(dir, logf, false)
}

// startEmbedded with listen set also listens on 127.0.0.1 on a random port,
// which tests use to exercise the external-NATS path.
func startEmbedded(dir string, logf func(string, ...any), listen bool) (*Embedded, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if dir == "" {
		return nil, errors.New("start state store: no data directory given")
	}
	natsDir := filepath.Join(dir, natsSubdir)
	if err := checkDataDir(dir, natsDir); err != nil {
		return nil, err
	}
	if err := copyAside(dir, natsDir); err != nil {
		return nil, fmt.Errorf("start state store: %w", err)
	}
	opts := &server.Options{
		ServerName: "devgate",
		JetStream:  true,
		StoreDir:   natsDir,
		// SyncAlways fsyncs each write before the publish is acknowledged;
		// the default (a sync every 2 minutes) could lose acknowledged state
		// on a power cut.
		SyncAlways: true,
		DontListen: !listen,
		NoSigs:     true,
		Host:       "127.0.0.1",
		Port:       -1, // random, used only when listen is set
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start state store in %s: %w", natsDir, err)
	}
	lg := &serverLogger{logf: logf}
	srv.SetLoggerV2(lg, false, false, false)
	srv.Start()
	e := &Embedded{srv: srv, dir: natsDir, logf: logf}
	if !srv.ReadyForConnections(startTimeout) {
		e.Shutdown()
		return nil, fmt.Errorf("start state store in %s: server not ready after %v%s", natsDir, startTimeout, lg.fatalSuffix())
	}
	if f := lg.fatal(); f != "" || !srv.JetStreamEnabled() {
		e.Shutdown()
		return nil, fmt.Errorf("state store in %s could not be opened: %s; check the directory's permissions, or move it aside or restore it from a backup", natsDir, nonEmpty(f, "JetStream did not start"))
	}
	if err := e.verifyStreams(); err != nil {
		e.Shutdown()
		if kept := keepDamaged(dir); kept != "" {
			return nil, fmt.Errorf("%w; the files as they were before this start are in %s", err, kept)
		}
		return nil, err
	}
	return e, nil
}

// checkDataDir makes sure dir and dir/nats are readable directories,
// creating them only when they do not exist at all.
func checkDataDir(dir, natsDir string) error {
	for _, d := range []string{dir, natsDir} {
		fi, err := os.Stat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.MkdirAll(d, 0o700); err != nil {
				return fmt.Errorf("create state directory %s: %w", d, err)
			}
			continue
		case err != nil:
			return fmt.Errorf("state directory %s is unreadable: %w; fix its permissions, or move it aside or restore it from a backup", d, err)
		case !fi.IsDir():
			return fmt.Errorf("state directory %s is not a directory; move it aside or restore it from a backup", d)
		}
		if _, err := os.ReadDir(d); err != nil {
			return fmt.Errorf("state directory %s is unreadable: %w; fix its permissions, or move it aside or restore it from a backup", d, err)
		}
	}
	return nil
}

// verifyStreams checks that every stream directory on disk was loaded. The
// server only warns about a stream whose metadata it cannot read and carries
// on without it; Open would then create an empty bucket over the lost one.
func (e *Embedded) verifyStreams() error {
	streamsDir := filepath.Join(e.dir, "jetstream", server.DEFAULT_GLOBAL_ACCOUNT, "streams")
	ents, err := os.ReadDir(streamsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state store in %s is unreadable: %w; fix its permissions, or move it aside or restore it from a backup", streamsDir, err)
	}
	nc, err := e.Conn()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("state store in %s: %w", e.dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for _, ent := range ents {
		if !ent.IsDir() {
			continue
		}
		path := filepath.Join(streamsDir, ent.Name())
		st, err := js.Stream(ctx, ent.Name())
		if err != nil {
			return fmt.Errorf("state store data in %s could not be loaded (%v); it may be corrupt: move it aside or restore it from a backup", path, err)
		}
		if err := damaged(ent.Name(), st.CachedInfo().State); err != nil {
			return fmt.Errorf("state store data in %s is damaged: %v; stop devgate, move %s aside and restore it from a backup", path, err, e.dir)
		}
	}
	return nil
}

// damaged looks for the signs of a repair that dropped data: data the
// server reports lost, or a state bucket with no messages at all although
// it was written to. The bucket never empties by itself: deletes leave
// markers and counters are never deleted.
func damaged(stream string, st jetstream.StreamState) error {
	if st.Lost != nil && len(st.Lost.Msgs) > 0 {
		return fmt.Errorf("%d records could not be read", len(st.Lost.Msgs))
	}
	if stream == "KV_"+Bucket && st.LastSeq > 0 && st.Msgs == 0 {
		return fmt.Errorf("none of its %d records could be read", st.LastSeq)
	}
	return nil
}

// Conn returns a new in-process client connection to the server. The caller
// closes it.
func (e *Embedded) Conn() (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(e.srv), nats.Name("devgate"),
		// In-process there is nothing to reconnect to once the server stops.
		nats.NoReconnect())
	if err != nil {
		return nil, fmt.Errorf("connect to embedded state store: %w: %w", ErrUnavailable, err)
	}
	return nc, nil
}

// clientURL is the TCP address when started with listen (tests only).
func (e *Embedded) clientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits until it has stopped, so the data
// directory may be opened again. It may be called more than once.
func (e *Embedded) Shutdown() {
	e.once.Do(func() {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	})
}

// Connect dials an external NATS server (or cluster) at url. It keeps
// reconnecting forever after a disconnect, so a gateway rides out a NATS
// restart; while disconnected, store operations fail with ErrUnavailable.
func Connect(url string) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name("devgate"), nats.Timeout(connectTimeout),
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w: %w; check --nats-url and that the server is running", url, ErrUnavailable, err)
	}
	return nc, nil
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// serverLogger adapts the server's logger to logf and remembers fatal
// errors: the server reports a failed JetStream start only through Fatalf.
type serverLogger struct {
	logf func(string, ...any)
	mu   sync.Mutex
	fat  string
}

func (l *serverLogger) Noticef(f string, a ...any) { l.logf("nats: "+f, a...) }
func (l *serverLogger) Warnf(f string, a ...any)   { l.logf("nats: warning: "+f, a...) }
func (l *serverLogger) Errorf(f string, a ...any)  { l.logf("nats: error: "+f, a...) }
func (l *serverLogger) Debugf(string, ...any)      {}
func (l *serverLogger) Tracef(string, ...any)      {}
func (l *serverLogger) Fatalf(f string, a ...any) {
	msg := fmt.Sprintf(f, a...)
	l.logf("nats: fatal: %s", msg)
	l.mu.Lock()
	if l.fat == "" {
		l.fat = msg
	}
	l.mu.Unlock()
}

func (l *serverLogger) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fat
}

func (l *serverLogger) fatalSuffix() string {
	if f := l.fatal(); f != "" {
		return ": " + f
	}
	return ""
}
