package gateway

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/store"
	mdns "github.com/miekg/dns"
	"golang.org/x/net/websocket"
)

func get(t *testing.T, c *client.Client, url string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	// A kept-alive connection would keep a machine awake, as it should; the
	// tests that watch auto-stop must not leave one open.
	req.Close = true
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp, string(body)
}

// wsEcho opens a WebSocket to hello's /ws echo at addr through the tunnel
// and checks that a message comes back.
func wsEcho(t *testing.T, c *client.Client, addr netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, 80).String())
	if err != nil {
		t.Fatalf("WebSocket: dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	cfg, err := websocket.NewConfig("ws://hello.flycast/ws", "http://laptop/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("WebSocket: handshake through the proxy: %v", err)
	}
	for _, msg := range []string{"hello over WireGuard", strings.Repeat("x", 20000)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("WebSocket: send: %v", err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("WebSocket: echo of %d bytes = %d bytes, %v", len(msg), len(got), err)
		}
	}
}

func (h *harness) stopAll(app string) {
	h.t.Helper()
	for _, m := range h.machines(app) {
		if err := h.api.StopMachine(h.ctx(), m.ID); err != nil {
			h.t.Fatalf("stop %s: %v", m.ID, err)
		}
	}
}

// TestFlycastWalkthrough is the seed page end to end: launch, deploy, ips
// list, DNS, a cold request that wakes a machine, warm requests, auto-stop
// and a wake again, and a restart that keeps it all.
func TestFlycastWalkthrough(t *testing.T) {
	checkGoroutines(t)
	h := &harness{t: t, dir: t.TempDir(), ups: upstream(t), idle: time.Hour, metrics: freeTCPAddr(t)}
	h.start()
	res := h.launch("hello", "\n[devgate]\n  idle_timeout = '1s'\n")
	if len(res.Machines) != DefaultMachines || len(res.IPs) != 1 {
		t.Fatalf("deploy made %d machines and %d addresses, want %d and 1", len(res.Machines), len(res.IPs), DefaultMachines)
	}
	flycastIP := res.IPs[0].Address
	if res.IPs[0].Type != store.IPPrivate {
		t.Errorf("address type %q, want private", res.IPs[0].Type)
	}
	c := h.dial(h.peer("personal", "laptop"))

	if got := aaaa(query(t, c, "hello.flycast", mdns.TypeAAAA)); len(got) != 1 || got[0] != flycastIP {
		t.Errorf("hello.flycast = %v, want %s (ips list)", got, flycastIP)
	}
	if got := txt(query(t, c, "_apps.internal", mdns.TypeTXT)); got != "hello" {
		t.Errorf("_apps.internal = %q, want hello", got)
	}

	// Wait for auto-stop (1s idle) to put both machines to sleep; one per pass.
	eventually(t, 30*time.Second, "all machines stopped by auto-stop", func() bool {
		return countState(h.machines("hello"), store.MachineStopped) == DefaultMachines
	})
	// .flycast still answers with every machine stopped; .internal does not.
	if got := aaaa(query(t, c, "hello.flycast", mdns.TypeAAAA)); len(got) != 1 {
		t.Errorf("hello.flycast with machines stopped = %v, want the address", got)
	}
	if got := aaaa(query(t, c, "hello.internal", mdns.TypeAAAA)); len(got) != 0 {
		t.Errorf("hello.internal with machines stopped = %v, want none", got)
	}

	resp, body := get(t, c, "http://hello.flycast/")
	if resp.StatusCode != 200 || !strings.Contains(body, "Hello from") {
		t.Fatalf("cold request: %s %q", resp.Status, body)
	}
	if n := countState(h.machines("hello"), store.MachineStarted); n != 1 {
		t.Errorf("after one cold request %d machines started, want 1", n)
	}
	// The proxy adds Fly's headers; hello echoes request headers it got.
	resp, body = get(t, c, "http://hello.flycast/")
	if resp.StatusCode != 200 {
		t.Fatalf("warm request: %s", resp.Status)
	}
	for _, hdr := range []string{"Fly-Request-Id", "Fly-Region", "Fly-Forwarded-Port", "X-Forwarded-For", "X-Forwarded-Proto", "Via"} {
		if !strings.Contains(body, hdr) {
			t.Errorf("backend did not get %s; it saw:\n%s", hdr, body)
		}
	}
	// A WebSocket upgrade passes through the http handler and the tunnel.
	wsEcho(t, c, flycastIP)
	started := h.machines("hello")
	for _, m := range started {
		if m.State == store.MachineStarted {
			if got := aaaa(query(t, c, "hello.internal", mdns.TypeAAAA)); len(got) != 1 || got[0] != m.Address {
				t.Errorf("hello.internal = %v, want the started machine %s", got, m.Address)
			}
			// Its 6PN address is reachable directly (no wake), like .internal.
			resp, _ := get(t, c, "http://["+m.Address.String()+"]:80/")
			if resp.StatusCode != 200 {
				t.Errorf("direct 6PN request: %s", resp.Status)
			}
		}
	}
	// It falls asleep again, and the next request wakes it again.
	eventually(t, 30*time.Second, "machines stopped again", func() bool {
		return countState(h.machines("hello"), store.MachineStopped) == DefaultMachines
	})
	if resp, _ := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Errorf("second cold request: %s", resp.Status)
	}

	// The metrics name what happened: wakes, requests, DNS, peers.
	mresp, err := http.Get("http://" + h.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mbody, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`devgate_wakes_total{app="hello",result="ok"}`, "devgate_wake_seconds_bucket", "devgate_requests_total",
		`devgate_dns_queries_total{rcode="NOERROR",type="AAAA"}`, `devgate_peer_rx_bytes_total{org="personal",peer="laptop"}`,
		"devgate_peer_handshake_age_seconds", `devgate_netstack_refused_total{reason="cross_network"}`,
		"devgate_wireguard_peers_loaded 1", "devgate_wireguard_peer_loads_total 1", "devgate_wireguard_initiations_replayed_total 0", "devgate_wireguard_initiations_handed_back_total ", `devgate_netstack_acks_held_total{outcome="carried"}`, `devgate_wireguard_receive_waits_total{outcome="drained"}`, `devgate_wireguard_send_waits_total{outcome="forgotten"}`,
		"devgate_http_handoffs_total 1"} { // the WebSocket upgrade
		if !strings.Contains(string(mbody), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A restart keeps the app, its address and its machines.
	before := h.machines("hello")
	h.restart()
	ips, err := h.api.ListIPs(h.ctx(), "hello")
	if err != nil || len(ips) != 1 || ips[0].Address != flycastIP {
		t.Fatalf("after restart: ips = %v, %v; want %s", ips, err, flycastIP)
	}
	after := h.machines("hello")
	if len(after) != len(before) {
		t.Fatalf("after restart: %d machines, want %d", len(after), len(before))
	}
	for i := range after {
		if after[i].ID != before[i].ID || after[i].Address != before[i].Address {
			t.Errorf("machine %d changed across restart: %+v -> %+v", i, before[i], after[i])
		}
		if after[i].State == store.MachineStarted {
			t.Errorf("machine %s recorded started after a restart killed its process", after[i].ID)
		}
	}
	c2 := h.dial(h.peer("personal", "laptop2"))
	if resp, _ := get(t, c2, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Errorf("request after restart: %s", resp.Status)
	}
}

// TestFlycastRefusals covers the clear failures: auto-start off, a machine
// that fails at start, and a stopped machine's 6PN address.
func TestFlycastRefusals(t *testing.T) {
	h := newHarness(t)
	c := h.dial(h.peer("personal", "laptop"))

	t.Run("auto_start off", func(t *testing.T) {
		h.launch("manual", "")
		app, err := h.api.GetApp(h.ctx(), "manual")
		if err != nil {
			t.Fatal(err)
		}
		cfg := strings.Replace(string(app.Config), "auto_start_machines = true", "auto_start_machines = false", 1)
		if _, err := h.api.Deploy(h.ctx(), "manual", api.DeployRequest{Config: []byte(cfg)}); err != nil {
			t.Fatal(err)
		}
		m := h.machines("manual")
		h.stopAll("manual")
		resp, body := get(t, c, "http://manual.flycast/")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "auto_start") {
			t.Errorf("auto_start off, all stopped: %s %q; want 503 naming auto_start", resp.Status, body)
		}
		// The stopped machine's own address refuses (no wake through .internal).
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if conn, err := c.DialContext(dctx, "tcp", netip.AddrPortFrom(m[0].Address, 80).String()); err == nil {
			conn.Close()
			t.Errorf("dial to a stopped machine's 6PN address succeeded")
		}
	})
	t.Run("machine fails at start", func(t *testing.T) {
		h.launch("hello", "")
		app, err := h.api.GetApp(h.ctx(), "hello")
		if err != nil {
			t.Fatal(err)
		}
		h.stopAll("hello")
		bad := strings.Replace(string(app.Config), "app = 'devgate hello'", "app = 'devgate fail'", 1)
		if bad == string(app.Config) {
			t.Fatalf("test setup: command line not found in config:\n%s", app.Config)
		}
		// Deploy starts machines: every start fails, and deploy says so.
		_, err = h.api.Deploy(h.ctx(), "hello", api.DeployRequest{Config: []byte(bad)})
		if err == nil || !strings.Contains(err.Error(), "no machine") {
			t.Errorf("deploy of a failing command: err = %v, want 'no machine ... started'", err)
		}
		resp, body := get(t, c, "http://hello.flycast/")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "hello") {
			t.Errorf("request to a failing app: %s %q; want 503 naming the app", resp.Status, body)
		}
		ms := h.machines("hello")
		if countState(ms, store.MachineFailed) == 0 {
			t.Errorf("no machine recorded failed: %+v", ms)
		}
		for _, m := range ms {
			if m.State == store.MachineFailed && m.Reason == "" {
				t.Errorf("failed machine %s has no reason", m.ID)
			}
		}
	})
}
