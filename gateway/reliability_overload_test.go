package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/dns"
	"github.com/devgate/devgate/netstack"
	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/device"
)

// tcpApp is a fly.toml with one raw TCP service (no handlers, so the proxy
// splices) on port 80, and the given machine mode and hard limit.
func tcpApp(name, mode string, hard int) []byte {
	env := ""
	if mode != "" {
		env = fmt.Sprintf("\n[env]\n  %s = '%s'\n", envMachine, mode)
	}
	return []byte(fmt.Sprintf(`app = '%s'
primary_region = 'local'

[processes]
  app = 'devgate hello'
%s
[[services]]
  internal_port = 80
  protocol = 'tcp'
  auto_stop_machines = 'off'
  auto_start_machines = true
  [services.concurrency]
    type = 'connections'
    soft_limit = %d
    hard_limit = %d
  [[services.ports]]
    port = 80
`, name, env, hard, hard))
}

func (h *harness) deployConfig(name string, cfg []byte) api.DeployResponse {
	h.t.Helper()
	if _, err := h.api.CreateApp(h.ctx(), api.CreateAppRequest{Name: name, Flycast: true, Config: cfg}); err != nil {
		h.t.Fatalf("create app %s: %v", name, err)
	}
	res, err := h.api.Deploy(h.ctx(), name, api.DeployRequest{Config: cfg})
	if err != nil {
		h.t.Logf("deploy %s: %v", name, err)
		ips, _ := h.api.ListIPs(h.ctx(), name)
		res.IPs = ips
	}
	return res
}

// TestSYNFlood: one peer opens many connections at once to a Flycast
// address whose machine never gets ready, so the proxy holds every SYN while
// it wakes it. The peer's SYNs beyond netstack.DefaultMaxSYNPerPeer are
// refused at once (RefusedSYNLimit grows), and another peer's connections
// succeed meanwhile.
func TestSYNFlood(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.WakeTimeout = 4 * time.Second })
	h.launch("hello", "")
	slow := h.deployConfig("slowtcp", tcpApp("slowtcp", "hang", 1000))
	if len(slow.IPs) == 0 {
		t.Fatal("slowtcp has no address")
	}
	dst := netip.AddrPortFrom(slow.IPs[0].Address, 80).String()
	flooder := h.dial(h.peer("personal", "flooder"))
	other := h.dial(h.peer("personal", "other"))
	if resp, _ := get(t, other, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %s", resp.Status)
	}
	const flood = 4 * netstack.DefaultMaxSYNPerPeer
	before := h.g.NetstackStats()
	var refused, other200 atomic.Int64
	var wg sync.WaitGroup
	for range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := flooder.DialContext(ctx, "tcp", dst)
			if err == nil {
				c.Close()
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "refused") {
				refused.Add(1)
			}
		}()
	}
	// While the flood is held, the other peer is served.
	time.Sleep(500 * time.Millisecond) // let the flood arrive; not a timing assertion
	for range 5 {
		if resp, _ := get(t, other, "http://hello.flycast/"); resp.StatusCode == 200 {
			other200.Add(1)
		}
	}
	wg.Wait()
	after := h.g.NetstackStats()
	limited := after.RefusedSYNLimit - before.RefusedSYNLimit
	t.Logf("%d SYNs from one peer: %d refused in all, %d of them at once by the per-peer limit (RefusedSYNLimit); other peer: %d/5 requests served", flood, refused.Load(), limited, other200.Load())
	if limited < uint64(flood-netstack.DefaultMaxSYNPerPeer)/2 {
		t.Errorf("RefusedSYNLimit grew by %d for %d concurrent SYNs; want most of those beyond %d refused", limited, flood, netstack.DefaultMaxSYNPerPeer)
	}
	if other200.Load() != 5 {
		t.Errorf("other peer was served %d of 5 times during the flood", other200.Load())
	}
}

// slowHTTPApp has one http service, at most one request per machine.
func slowHTTPApp(name string) []byte {
	return []byte(fmt.Sprintf(`app = '%s'
primary_region = 'local'

[processes]
  app = 'devgate hello'

[env]
  %s = 'slow'

[http_service]
  internal_port = 80
  auto_stop_machines = 'off'
  auto_start_machines = true
  [http_service.concurrency]
    type = 'requests'
    soft_limit = 1
    hard_limit = 1
`, name, envMachine))
}

// TestHardLimitQueue: with every machine at hard_limit, a request waits in
// the bounded queue and, after the queue timeout, gets a 503 that says what
// to do; once a machine is free again, requests are served.
func TestHardLimitQueue(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.QueueTimeout = time.Second })
	res := h.deployConfig("held", slowHTTPApp("held"))
	if len(res.Machines) != DefaultMachines {
		t.Fatalf("held: %d machines", len(res.Machines))
	}
	c := h.dial(h.peer("personal", "laptop"))
	// Hold every machine with a slow request.
	var wg sync.WaitGroup
	held := make([]int, DefaultMachines)
	for i := range DefaultMachines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := get(t, c, "http://held.flycast/?sleep=5s")
			held[i] = resp.StatusCode
		}()
	}
	time.Sleep(time.Second) // let them reach the machines; not a timing assertion
	resp, body := get(t, c, "http://held.flycast/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "hard_limit") {
		t.Errorf("request with every machine at hard_limit: %s %q; want 503 naming hard_limit", resp.Status, body)
	}
	t.Logf("queued request got: %s %s", resp.Status, strings.TrimSpace(body))
	wg.Wait()
	for i, code := range held {
		if code != 200 {
			t.Errorf("held request %d: %d", i, code)
		}
	}
	if resp, _ := get(t, c, "http://held.flycast/"); resp.StatusCode != 200 {
		t.Errorf("after the machines are free: %s", resp.Status)
	}
}

// manyConns is how many proxied connections TestManyConnections holds.
const manyConns = 2000

// TestManyConnections holds 2,000 proxied TCP connections open at once
// through one peer, each spliced to a machine, checks that they all still
// work, and logs the memory each costs (the whole process: both WireGuard
// ends, both netstacks, the proxy; the machine is another process).
func TestManyConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 2,000 connections")
	}
	h := newHarness(t)
	res := h.deployConfig("many", tcpApp("many", "", 10*manyConns))
	c := h.dial(h.peer("personal", "laptop"))
	dst := netip.AddrPortFrom(res.IPs[0].Address, 80).String()
	request := "GET / HTTP/1.1\r\nHost: many\r\n\r\n"
	roundTrip := func(conn net.Conn) error {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(conn, request); err != nil {
			return err
		}
		buf := make([]byte, 12)
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != "HTTP/1.1 200" {
			return fmt.Errorf("got %q", buf)
		}
		// Drain the rest of this response so the next starts clean.
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		io.Copy(io.Discard, conn)
		return nil
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	g0 := runtime.NumGoroutine()
	conns := make([]net.Conn, manyConns)
	sem := make(chan struct{}, 32) // below the per-peer SYN budget
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			conn, err := c.DialContext(ctx, "tcp", dst)
			if err == nil {
				err = roundTrip(conn)
			}
			if err != nil {
				failed.Add(1)
				if conn != nil {
					conn.Close()
				}
				return
			}
			conns[i] = conn
		}()
	}
	wg.Wait()
	defer func() {
		for _, conn := range conns {
			if conn != nil {
				conn.Close()
			}
		}
	}()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed", n, manyConns)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	g1 := runtime.NumGoroutine()
	// Every one still works (a sample, to keep it quick).
	for i := 0; i < manyConns; i += manyConns / 50 {
		if err := roundTrip(conns[i]); err != nil {
			t.Errorf("connection %d after all were open: %v", i, err)
		}
	}
	heap := int64(ms1.HeapInuse) - int64(ms0.HeapInuse)
	stack := int64(ms1.StackInuse) - int64(ms0.StackInuse)
	t.Logf("%d proxied connections open: heap +%d KiB (%d B/conn), stacks +%d KiB (%d B/conn), goroutines +%d (%.1f/conn); both tunnel ends in this process",
		manyConns, heap>>10, heap/manyConns, stack>>10, stack/manyConns, g1-g0, float64(g1-g0)/manyConns)
}

// blackhole is an upstream resolver that reads queries and never answers.
func blackhole(t *testing.T) (string, *atomic.Int64) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return pc.LocalAddr().String(), &n
}

// TestDNSForwardBound: with an upstream that never answers, a burst of
// public queries larger than dns.DefaultMaxForwardInFlight reaches the
// upstream at most that many times at once; the rest are SERVFAIL at once,
// and every query gets an answer.
func TestDNSForwardBound(t *testing.T) {
	hole, seen := blackhole(t)
	h := newHarnessWith(t, func(c *Config) { c.UpstreamDNS = []string{hole} })
	c := h.dial(h.peer("personal", "laptop"))
	const burst = dns.DefaultMaxForwardInFlight + 200
	// Like a stub resolver, a query that gets no answer at all (a UDP
	// datagram lost in the burst) is sent again, a bounded number of times.
	const attempts = 4
	var servfail, lost, tries atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			q := new(mdns.Msg)
			q.SetQuestion(fmt.Sprintf("host%d.example.org.", i), mdns.TypeA)
			for range attempts {
				tries.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := c.Exchange(ctx, q)
				cancel()
				if err == nil && r.Rcode == mdns.RcodeServerFailure {
					servfail.Add(1)
					return
				}
				lost.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("%d public queries at once, upstream silent: %d SERVFAIL after %d sends (%d got no reply and were re-sent); upstream received %d",
		burst, servfail.Load(), tries.Load(), lost.Load(), seen.Load())
	if servfail.Load() != burst {
		t.Errorf("%d of %d queries got SERVFAIL; want every one answered", servfail.Load(), burst)
	}
	// Each forwarded query reaches the (only) upstream once; queries beyond
	// the bound are answered without being forwarded.
	if seen.Load() >= tries.Load() || seen.Load() == 0 {
		t.Errorf("upstream received %d queries for %d sent: the in-flight bound did not refuse any", seen.Load(), tries.Load())
	}
	// A private name is still answered while public ones fail.
	if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
		t.Errorf("_peer.internal during the burst = %q", got)
	}
}

// TestHandshakeFlood floods the gateway's WireGuard port with handshake
// initiations from unknown keys, each with a valid MAC1 (anyone who knows
// the gateway's public key can compute it). wireguard-go declares itself
// under load and answers with cookie replies instead of doing the
// Diffie-Hellman work; an established peer keeps working throughout.
func TestHandshakeFlood(t *testing.T) {
	h := newHarness(t)
	c := h.dial(h.peer("personal", "laptop"))
	if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
		t.Fatalf("before the flood: %q", got)
	}
	var gen device.CookieGenerator
	gen.Init(device.NoisePublicKey(h.g.PublicKey()))
	gw := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: h.g.Port()}
	const senders, perSender = 4, 8000
	var cookies, sent atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range senders {
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		wg.Add(2)
		go func() { // count cookie replies
			defer wg.Done()
			buf := make([]byte, 256)
			for {
				conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, _, err := conn.ReadFrom(buf)
				if err != nil {
					select {
					case <-stop:
						return
					default:
						continue
					}
				}
				if n == device.MessageCookieReplySize && binary.LittleEndian.Uint32(buf[:4]) == device.MessageCookieReplyType {
					cookies.Add(1)
				}
			}
		}()
		go func() {
			defer wg.Done()
			msg := make([]byte, device.MessageInitiationSize)
			for i := range perSender {
				rand.Read(msg[4:])
				binary.LittleEndian.PutUint32(msg[:4], device.MessageInitiationType)
				binary.LittleEndian.PutUint32(msg[4:8], uint32(i))
				gen.AddMacs(msg)
				if _, err := conn.WriteTo(msg, gw); err == nil {
					sent.Add(1)
				}
			}
		}()
	}
	// The established peer is served during the flood. Its datagrams share
	// the gateway's UDP socket with the flood, so one may be lost there; like
	// a stub resolver it asks again, a bounded number of times.
	var okQ, failQ, resent int
	for range 20 {
		q := new(mdns.Msg)
		q.SetQuestion("_peer.internal.", mdns.TypeTXT)
		ok := false
		for attempt := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r, err := c.Exchange(ctx, q)
			cancel()
			if err == nil && txt(r) == "laptop" {
				ok = true
				resent += attempt
				break
			}
		}
		if ok {
			okQ++
		} else {
			failQ++
		}
	}
	time.Sleep(time.Second) // late replies; not a timing assertion
	close(stop)
	wg.Wait()
	t.Logf("%d handshake initiations from unknown keys: %d cookie replies; established peer: %d/%d queries answered (%d re-sent)", sent.Load(), cookies.Load(), okQ, okQ+failQ, resent)
	if cookies.Load() == 0 {
		t.Errorf("no cookie reply under a flood of %d initiations: the device never declared itself under load", sent.Load())
	}
	if failQ > 0 {
		t.Errorf("established peer: %d of %d queries failed during the flood", failQ, okQ+failQ)
	}
}
