package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/examples/hello"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestMain lets this test binary play a machine: apps deployed with the
// command "devgate hello" run os.Executable(), which is this binary, with
// the argument "hello".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "hello":
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := hello.Run(ctx, ":"+os.Getenv("PORT"), func(string, ...any) {}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Exit(0)
		case "fail":
			fmt.Fprintln(os.Stderr, "this machine fails at start on purpose")
			os.Exit(3)
		}
	}
	os.Exit(m.Run())
}

// upstream is a test resolver on loopback standing in for the host's.
func upstream(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "example.com." && r.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR("example.com. 300 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

type harness struct {
	t    testing.TB
	dir  string
	ups  string
	g    *Gateway
	api  *api.Client
	idle time.Duration
	// metrics, when set, serves /metrics there.
	metrics string
}

func newHarness(t testing.TB) *harness {
	h := &harness{t: t, dir: t.TempDir(), ups: upstream(t), idle: time.Hour}
	h.start()
	return h
}

// checkGoroutines fails t if, after every later cleanup has run (the
// gateway, its clients), more goroutines run than before the test began.
// Register it first so that it runs last.
func checkGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines leaked: %d before, %d after:\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := Start(ctx, Config{
		DataDir: h.dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{h.ups},
		IdleTimeout: h.idle, UAPIPath: filepath.Join(h.dir, "wg.sock"), Logf: h.t.Logf, MetricsAddr: h.metrics,
	})
	if err != nil {
		h.t.Fatalf("start gateway: %v", err)
	}
	h.g = g
	h.api = api.NewUnixClient(h.dir)
	h.t.Cleanup(func() { h.stop() })
}

func (h *harness) stop() {
	if h.g != nil {
		if err := h.g.Close(); err != nil {
			h.t.Errorf("close gateway: %v", err)
		}
		h.g = nil
	}
}

func (h *harness) restart() {
	h.t.Helper()
	h.stop()
	h.start()
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

// peer registers a new peer in org and returns its config, pointed at the
// gateway's current port.
func (h *harness) peer(org, name string) *peers.Config {
	h.t.Helper()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		h.t.Fatal(err)
	}
	res, err := h.api.CreatePeer(h.ctx(), api.CreatePeerRequest{Org: org, Name: name, PublicKey: priv.PublicKey().String()})
	if err != nil {
		h.t.Fatalf("create peer %s/%s: %v", org, name, err)
	}
	gw, _ := wgtypes.ParseKey(res.GatewayPublicKey)
	return peers.ClientConfig(priv, gw, res.Peer.Address, res.NetworkPrefix, h.endpoint())
}

func (h *harness) endpoint() string { return fmt.Sprintf("127.0.0.1:%d", h.g.Port()) }

func (h *harness) dial(cfg *peers.Config) *client.Client {
	h.t.Helper()
	cfg.Peers[0].Endpoint = h.endpoint()
	c, err := client.New(cfg, h.t.Logf)
	if err != nil {
		h.t.Fatalf("client: %v", err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// launch creates and deploys an app running this binary's hello server.
func (h *harness) launch(name, extra string) api.DeployResponse {
	h.t.Helper()
	text := appconfig.Generate(appconfig.LaunchOptions{App: name, PrimaryRegion: "local", Command: "devgate hello", InternalPort: 80, Flycast: true})
	text = append(text, []byte(extra)...)
	if _, err := h.api.CreateApp(h.ctx(), api.CreateAppRequest{Name: name, Flycast: true, Config: text}); err != nil {
		h.t.Fatalf("create app %s: %v", name, err)
	}
	res, err := h.api.Deploy(h.ctx(), name, api.DeployRequest{Config: text})
	if err != nil {
		h.t.Fatalf("deploy %s: %v", name, err)
	}
	return res
}

func query(t *testing.T, c *client.Client, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(name), qtype)
	q.RecursionDesired = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Exchange(ctx, q)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func aaaa(r *mdns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.AAAA); ok {
			addr, _ := netip.AddrFromSlice(a.AAAA)
			out = append(out, addr)
		}
	}
	return out
}

func txt(r *mdns.Msg) string {
	var parts []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*mdns.TXT); ok {
			parts = append(parts, strings.Join(t.Txt, ""))
		}
	}
	return strings.Join(parts, "|")
}

// eventually polls cond every 50ms until it holds or limit passes. It is
// for state that changes asynchronously (a machine stopping), not a timing
// assertion: the limit is generous.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %s", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) machines(app string) []store.Machine {
	h.t.Helper()
	ms, err := h.api.ListMachines(h.ctx(), app)
	if err != nil {
		h.t.Fatal(err)
	}
	return ms
}

func countState(ms []store.Machine, s store.MachineState) int {
	n := 0
	for _, m := range ms {
		if m.State == s {
			n++
		}
	}
	return n
}
