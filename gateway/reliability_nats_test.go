package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	mdns "github.com/miekg/dns"
	"github.com/nats-io/nats-server/v2/server"
)

// externalNATS is a nats-server with JetStream on a loopback TCP port,
// standing in for an operator's NATS (--nats-url). It can be stopped and
// started again on the same port and storage.
type externalNATS struct {
	t    *testing.T
	port int
	dir  string
	srv  *server.Server
}

func newExternalNATS(t *testing.T) *externalNATS {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	n := &externalNATS{t: t, port: port, dir: t.TempDir()}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *externalNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func (n *externalNATS) start() {
	n.t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.dir, NoSigs: true, NoLog: true})
	if err != nil {
		n.t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("nats-server did not start")
	}
	n.srv = srv
}

func (n *externalNATS) stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// TestExternalNATSOutage: with an external NATS that goes away, the data
// plane keeps serving from the state it has (a warm request works), writes
// fail with a clear 503, and when NATS returns a write succeeds again and a
// peer created after the outage works.
func TestExternalNATSOutage(t *testing.T) {
	nats := newExternalNATS(t)
	h := newHarnessWith(t, func(c *Config) { c.NATSURL = nats.url() })
	h.launch("hello", "")
	c := h.dial(h.peer("personal", "laptop"))
	if resp, _ := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Fatalf("before the outage: %s", resp.Status)
	}

	nats.stop()
	t.Run("data plane keeps serving", func(t *testing.T) {
		for i := range 3 {
			if resp, body := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
				t.Errorf("warm request %d with NATS down: %s %q", i, resp.Status, body)
			}
		}
		if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
			t.Errorf("DNS with NATS down: _peer.internal = %q", got)
		}
	})
	t.Run("writes fail with 503", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := h.api.CreateOrg(ctx, "acme")
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != 503 {
			t.Fatalf("write with NATS down: %v; want a 503", err)
		}
		if !strings.Contains(strings.ToLower(se.Message), "unreachable") && !strings.Contains(strings.ToLower(se.Message), "nats") {
			t.Errorf("503 does not say the state store is unreachable: %q", se.Message)
		}
		t.Logf("client saw: %s", se.Message)
	})

	nats.start()
	t.Run("recovers", func(t *testing.T) {
		eventually(t, 60*time.Second, "a write succeeds after NATS returns", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := h.api.CreateOrg(ctx, "acme")
			return err == nil || strings.Contains(err.Error(), "exists")
		})
		late := h.dial(h.peer("personal", "late"))
		// The write is acknowledged at once; the data plane learns of it
		// when the store's watch resumes (its consumer is re-created after
		// missed heartbeats). Measured, not asserted.
		begin := time.Now()
		eventually(t, 90*time.Second, "the new peer reaches the data plane", func() bool {
			return len(h.g.Snapshot().Peers) == 2
		})
		t.Logf("after NATS returned, a new peer reached the data plane in %s", time.Since(begin).Round(100*time.Millisecond))
		if got := txt(query(t, late, "_peer.internal", mdns.TypeTXT)); got != "laptop,late" {
			t.Errorf("peer created after the outage: _peer.internal = %q, want laptop,late", got)
		}
		if resp, _ := get(t, late, "http://hello.flycast/"); resp.StatusCode != 200 {
			t.Errorf("peer created after the outage: %s", resp.Status)
		}
	})
}
