package tunnel_test

// End-to-end tests: a gateway (netstack.Stack + tunnel.Tunnel on 127.0.0.1)
// and userspace clients (client.Client), all in-process with real
// wireguard-go and real UDP sockets.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/tunnel"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// No gVisor refs leak check here: the client side (wireguard-go's
// tun/netstack) never releases the views its Read copies from, so it would
// always report leaks. netstack's own tests check devgate's stack.

// testRouter serves fixed handlers; it is the Router the gateway asks.
type testRouter struct {
	mu     sync.Mutex
	tcp    map[netip.AddrPort]netstack.TCPHandler
	exists map[netip.Addr]bool
}

func (r *testRouter) RouteTCP(src, dst netip.AddrPort) netstack.TCPHandler {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tcp[dst]
}

func (r *testRouter) Exists(dst netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exists[dst]
}

// handlerFunc adapts a function to TCPHandler.
type handlerFunc func(netstack.TCPRequest)

func (f handlerFunc) ServeTCP(r netstack.TCPRequest) { f(r) }

// echo accepts, optionally after a delay, and echoes.
func echo(delay time.Duration) netstack.TCPHandler {
	return handlerFunc(func(r netstack.TCPRequest) {
		time.Sleep(delay)
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
}

var (
	network   = peers.NetworkPrefix(1)
	service   = peers.Flycast(network, 1)
	elsewhere = peers.Flycast(peers.NetworkPrefix(2), 1)
)

type gateway struct {
	stack  *netstack.Stack
	tun    *tunnel.Tunnel
	key    wgtypes.Key
	router *testRouter
	peers  []tunnel.Peer
}

func newGateway(t testing.TB, cfg netstack.Config, uapiPath string) *gateway {
	t.Helper()
	return newGatewayTun(t, cfg, tunnel.Config{UAPIPath: uapiPath}, nil, nil)
}

// newGatewayTun is newGateway with tunnel options; key, TUN and Logf are
// filled in, the TUN passed through wrap and the UDP bind through wrapBind
// if they are not nil.
func newGatewayTun(t testing.TB, cfg netstack.Config, tcfg tunnel.Config, wrap func(tun.Device) tun.Device, wrapBind func(conn.Bind) conn.Bind) *gateway {
	t.Helper()
	r := &testRouter{
		tcp:    map[netip.AddrPort]netstack.TCPHandler{netip.AddrPortFrom(service, 80): echo(0)},
		exists: map[netip.Addr]bool{service: true},
	}
	cfg.Router = r
	cfg.Logf = t.Logf
	st, err := netstack.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	tcfg.PrivateKey, tcfg.TUN, tcfg.Logf = key, st.TUN(), t.Logf
	if wrap != nil {
		tcfg.TUN = wrap(tcfg.TUN)
	}
	tn, err := tunnel.NewWithBind(tcfg, wrapBind)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	gw := &gateway{stack: st, tun: tn, key: key, router: r}
	t.Cleanup(func() {
		tn.Close()
		st.Close()
	})
	return gw
}

// addClient makes a client numbered n, adds it as a peer and starts it.
// routeAll sends every destination through the tunnel, not only the /48.
func (gw *gateway) addClient(t testing.TB, n uint32, routeAll bool) (*client.Client, tunnel.Peer) {
	t.Helper()
	priv, addr, p := gw.addPeer(t, n)
	cfg := peers.ClientConfig(priv, gw.key.PublicKey(), addr, network, "127.0.0.1:"+strconv.Itoa(gw.tun.Port()))
	if routeAll {
		cfg.Peers[0].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("::/0")}
	}
	return startClient(t, cfg), p
}

// addLaptop configures peer number n and returns its key and a function
// that starts a client with that key sending to endpoint: each call is the
// laptop (re)started, with a new session.
func (gw *gateway) addLaptop(t testing.TB, n uint32, endpoint string) (wgtypes.Key, func() *client.Client) {
	t.Helper()
	priv, addr, _ := gw.addPeer(t, n)
	return priv, func() *client.Client {
		return startClient(t, peers.ClientConfig(priv, gw.key.PublicKey(), addr, network, endpoint))
	}
}

// addPeer configures peer number n with a new key and returns the key, the
// peer's address and the peer.
func (gw *gateway) addPeer(t testing.TB, n uint32) (wgtypes.Key, netip.Addr, tunnel.Peer) {
	t.Helper()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	addr, err := peers.Peer(network, 1, n)
	if err != nil {
		t.Fatal(err)
	}
	p := tunnel.Peer{PublicKey: priv.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, peers.PeerPrefixLen).Masked()}}
	gw.peers = append(gw.peers, p)
	if err := gw.tun.SetPeers(gw.peers); err != nil {
		t.Fatal(err)
	}
	return priv, addr, p
}

// startClient starts a client, closed when the test ends.
func startClient(t testing.TB, cfg *peers.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkGoroutines fails the test if goroutines started during it are still
// running (bounded wait) after its cleanups.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// roundTrip writes msg on c and expects it echoed.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func dialService(t testing.TB, c *client.Client, port uint16) net.Conn {
	t.Helper()
	conn, err := c.DialContext(ctxTimeout(t, 15*time.Second), "tcp", netip.AddrPortFrom(service, port).String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestHandshakeAndTCPEcho(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	c, p := gw.addClient(t, 1, false)
	conn := dialService(t, c, 80)
	roundTrip(t, conn, "hello")
	roundTrip(t, conn, strings.Repeat("x", 100_000)) // several segments each way

	ps, err := gw.tun.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].PublicKey != p.PublicKey {
		t.Fatalf("stats = %+v, want one peer %s", ps, p.PublicKey)
	}
	if ps[0].LastHandshake.IsZero() || ps[0].RxBytes == 0 || ps[0].TxBytes == 0 || !ps[0].Endpoint.IsValid() {
		t.Errorf("peer stats = %+v, want a handshake, an endpoint and bytes both ways", ps[0])
	}
	if got := gw.stack.Stats().TCPAccepted; got != 1 {
		t.Errorf("TCPAccepted = %d, want 1", got)
	}
}

func TestTCPNoRouteIsRefused(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	c, _ := gw.addClient(t, 1, false)
	_, err := c.DialContext(ctxTimeout(t, 15*time.Second), "tcp", netip.AddrPortFrom(service, 81).String())
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial unrouted port: err = %v, want connection refused", err)
	}
	if got := gw.stack.Stats().RefusedNoRoute; got != 1 {
		t.Errorf("RefusedNoRoute = %d, want 1", got)
	}
}

func TestHeldSYNStillConnects(t *testing.T) {
	checkGoroutines(t)
	// This gateway also uses the single-address bind (ListenAddr).
	gw := newGatewayTun(t, netstack.Config{}, tunnel.Config{ListenAddr: netip.MustParseAddr("127.0.0.1")}, nil, nil)
	gw.router.tcp[netip.AddrPortFrom(service, 8080)] = echo(200 * time.Millisecond)
	c, _ := gw.addClient(t, 1, false)
	roundTrip(t, dialService(t, c, 8080), "woken")
}

func TestSYNPerPeerLimit(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{MaxSYNPerPeer: 1}, "")
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	gw.router.tcp[netip.AddrPortFrom(service, 8080)] = handlerFunc(func(r netstack.TCPRequest) {
		held <- struct{}{}
		<-release
		r.Refuse()
	})
	c, _ := gw.addClient(t, 1, false)
	first := make(chan error, 1)
	go func() {
		_, err := c.DialContext(ctxTimeout(t, 15*time.Second), "tcp", netip.AddrPortFrom(service, 8080).String())
		first <- err
	}()
	select {
	case <-held:
	case <-time.After(15 * time.Second):
		t.Fatal("first SYN never reached the handler")
	}
	_, err := c.DialContext(ctxTimeout(t, 15*time.Second), "tcp", netip.AddrPortFrom(service, 80).String())
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("second dial while one SYN is held: err = %v, want refused", err)
	}
	if got := gw.stack.Stats().RefusedSYNLimit; got != 1 {
		t.Errorf("RefusedSYNLimit = %d, want 1", got)
	}
	close(release)
	if err := <-first; err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("held dial after Refuse: err = %v, want refused", err)
	}
	// The budget is released: a new connection works.
	roundTrip(t, dialService(t, c, 80), "again")
}

func TestPing(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	c, _ := gw.addClient(t, 1, false)
	// Many pings in a row, as the demo and users' scripts send them: a
	// reply that arrives before wireguard-go's PingConn starts waiting is
	// seen only with the next reply, so Ping must still answer each.
	for i := range 200 {
		if _, err := c.Ping(ctxTimeout(t, 15*time.Second), service); err != nil {
			t.Fatalf("ping %d of the existing address: %v", i+1, err)
		}
	}
	missing := peers.Flycast(network, 99)
	if _, err := c.Ping(ctxTimeout(t, 500*time.Millisecond), missing); err == nil {
		t.Fatal("ping to an address that does not exist was answered")
	}
	if got := gw.stack.Stats().DroppedEchoNoAddress; got == 0 {
		t.Error("DroppedEchoNoAddress = 0, want the echo counted")
	}
}

func TestCrossNetworkDropped(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	// The attacker routes everything into the tunnel and targets another
	// network's address, which the router would otherwise serve.
	gw.router.tcp[netip.AddrPortFrom(elsewhere, 80)] = echo(0)
	gw.router.exists[elsewhere] = true
	c, _ := gw.addClient(t, 1, true)
	roundTrip(t, dialService(t, c, 80), "own network works")
	_, err := c.DialContext(ctxTimeout(t, 500*time.Millisecond), "tcp", netip.AddrPortFrom(elsewhere, 80).String())
	if err == nil {
		t.Fatal("dial to another network's address succeeded")
	}
	if got := gw.stack.Stats().DroppedCrossNetwork; got == 0 {
		t.Error("DroppedCrossNetwork = 0, want the SYN counted")
	}
}

func TestUDPClosedPortUnreachable(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	c, _ := gw.addClient(t, 1, false)
	conn, err := c.DialContext(ctxTimeout(t, 5*time.Second), "udp", netip.AddrPortFrom(service, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// The first write may race the handshake; the ICMP error arrives for
	// a later one. Bounded: at most 10 tries.
	var rerr error
	for range 10 {
		if _, err := conn.Write([]byte("x")); err != nil {
			rerr = err
			break
		}
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, rerr = conn.Read(make([]byte, 10))
		if rerr != nil && !isTimeout(rerr) {
			break
		}
	}
	if rerr == nil || !strings.Contains(rerr.Error(), "refused") {
		t.Fatalf("UDP to a closed port: err = %v, want connection refused (ICMP port unreachable)", rerr)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestSetPeersLive(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	a, pa := gw.addClient(t, 1, false)
	connA := dialService(t, a, 80)
	roundTrip(t, connA, "before")

	b, _ := gw.addClient(t, 2, false) // SetPeers([a, b]) while a is connected
	roundTrip(t, dialService(t, b, 80), "new peer")
	roundTrip(t, connA, "existing connection unaffected")

	gw.peers = []tunnel.Peer{pa}
	if err := gw.tun.SetPeers(gw.peers); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DialContext(ctxTimeout(t, time.Second), "tcp", netip.AddrPortFrom(service, 80).String()); err == nil {
		t.Fatal("removed peer could still connect")
	}
	roundTrip(t, connA, "still fine")
	ps, err := gw.tun.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].PublicKey != pa.PublicKey {
		t.Errorf("peers after removal = %+v, want only %s", ps, pa.PublicKey)
	}
}

// TestUAPI reads the gateway through its UAPI socket as `wg show` does:
// the connected laptop with its traffic, configured peers that were never
// loaded into wireguard-go, and a peer an operator set by hand.
func TestUAPI(t *testing.T) {
	checkGoroutines(t)
	// Unix socket paths are limited to ~108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "dg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := dir + "/dg0.sock"
	gw := newGateway(t, netstack.Config{}, path)
	c, p := gw.addClient(t, 1, false)
	roundTrip(t, dialService(t, c, 80), "traffic")
	idle := makePeers(t, 2, 2)
	if err := gw.tun.SetPeers(append(slices.Clone(gw.peers), idle...)); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600", fi.Mode().Perm())
	}
	manual, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if errno, _ := uapi(t, path, "set=1\npublic_key="+hexKey(manual.PublicKey())+"\nallowed_ip=fd00:99::/64\n\n"); errno != "0" {
		t.Fatalf("UAPI set: errno=%s", errno)
	}
	errno, got := uapi(t, path, "get=1\n\n")
	if errno != "0" {
		t.Fatalf("UAPI get: errno=%s", errno)
	}
	if len(got) != 4 {
		t.Errorf("UAPI get lists %d peers, want 4 (laptop, 2 idle, 1 set by hand): %v", len(got), got)
	}
	laptop := got[hexKey(p.PublicKey)]
	for _, k := range []string{"last_handshake_time_sec", "rx_bytes", "tx_bytes"} {
		if n, _ := strconv.ParseInt(first(laptop[k]), 10, 64); n <= 0 {
			t.Errorf("laptop's %s = %q, want > 0", k, laptop[k])
		}
	}
	for _, q := range idle {
		e := got[hexKey(q.PublicKey)]
		if e == nil || first(e["allowed_ip"]) != q.AllowedIPs[0].String() || first(e["last_handshake_time_sec"]) != "0" {
			t.Errorf("idle peer %s = %v, want listed with its allowed IP and no handshake", q.PublicKey, e)
		}
	}
	if e := got[hexKey(manual.PublicKey())]; first(e["allowed_ip"]) != "fd00:99::/64" {
		t.Errorf("peer set by hand = %v, want its allowed IP", e)
	}
	if ls := gw.tun.Loads(); ls.Configured != 3 || ls.Loaded != 1 {
		t.Errorf("configured/loaded peers = %d/%d, want 3/1 (listing must not load idle peers)", ls.Configured, ls.Loaded)
	}

	// wg setconf replaces every peer: the laptop comes back with its
	// counters restarted in the device, and kept in what is reported.
	lines := "set=1\nreplace_peers=true\npublic_key=" + hexKey(p.PublicKey) + "\nallowed_ip=" + p.AllowedIPs[0].String() +
		"\npublic_key=" + hexKey(manual.PublicKey()) + "\nallowed_ip=fd00:99::/64\n\n"
	if errno, _ := uapi(t, path, lines); errno != "0" {
		t.Fatalf("UAPI replace_peers: errno=%s", errno)
	}
	if _, got = uapi(t, path, "get=1\n\n"); !kept(got[hexKey(p.PublicKey)]["rx_bytes"], laptop["rx_bytes"]) {
		t.Errorf("laptop's rx_bytes after replace_peers = %q, want %q kept", got[hexKey(p.PublicKey)]["rx_bytes"], laptop["rx_bytes"])
	}

	// A malformed get gets an errno, not silence.
	if errno, _ := uapi(t, path, "get=1\nx\n"); errno == "0" || errno == "" {
		t.Errorf("UAPI get with a trailing character: errno=%q, want an error", errno)
	}

	// The device's own key and port stay devgate's.
	if errno, _ := uapi(t, path, "set=1\nlisten_port=1\n\n"); errno == "0" {
		t.Error("UAPI set of listen_port accepted")
	}
	if _, got = uapi(t, path, "get=1\n\n"); len(got) != 4 {
		t.Errorf("after a refused set: %d peers, want 4", len(got))
	}

	// A second gateway does not take over the socket of a running one.
	st2, err := netstack.New(netstack.Config{Router: &testRouter{}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if tn, err := tunnel.New(tunnel.Config{PrivateKey: gw.key, TUN: st2.TUN(), UAPIPath: path, Logf: t.Logf}); err == nil {
		tn.Close()
		t.Error("second tunnel on a live UAPI socket started")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("second tunnel on a live UAPI socket: %v, want it in use", err)
	}

	// An operator removing a configured peer by hand unloads it: its
	// counters stay, and its next handshake would load it again.
	if errno, _ := uapi(t, path, "set=1\npublic_key="+hexKey(p.PublicKey)+"\nremove=true\n\n"); errno != "0" {
		t.Fatalf("UAPI remove: errno=%s", errno)
	}
	if ls := gw.tun.Loads(); ls.Loaded != 0 || ls.Unloads != 1 {
		t.Errorf("after removing the laptop by hand: loaded %d, unloads %d; want 0 and 1", ls.Loaded, ls.Unloads)
	}
	// Adding a configured peer by hand loads it.
	if errno, _ := uapi(t, path, "set=1\npublic_key="+hexKey(idle[0].PublicKey)+"\nallowed_ip="+idle[0].AllowedIPs[0].String()+"\n\n"); errno != "0" {
		t.Fatalf("UAPI add: errno=%s", errno)
	}
	if ls := gw.tun.Loads(); ls.Loaded != 1 {
		t.Errorf("after adding an idle peer by hand: loaded %d, want 1", ls.Loaded)
	}
	_, got = uapi(t, path, "get=1\n\n")
	if after := got[hexKey(p.PublicKey)]; !kept(after["rx_bytes"], laptop["rx_bytes"]) {
		t.Errorf("laptop's rx_bytes after removal = %q, want %q kept", after["rx_bytes"], laptop["rx_bytes"])
	}
}

// kept reports whether the counter now is at least what it was before: a
// late ACK from the laptop may still land between two readings, but a
// counter lost with a peer's removal would fall.
func kept(now, before []string) bool {
	n, err1 := strconv.ParseUint(first(now), 10, 64)
	b, err2 := strconv.ParseUint(first(before), 10, 64)
	return err1 == nil && err2 == nil && b > 0 && n >= b
}

// uapi sends one UAPI request and returns its errno and, for a get, each
// peer's values by key, keyed by the peer's hex public key.
func uapi(t *testing.T, path, req string) (errno string, peers map[string]map[string][]string) {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	peers = map[string]map[string][]string{}
	var cur map[string][]string
	sc := bufio.NewScanner(conn)
	for sc.Scan() && sc.Text() != "" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch {
		case k == "errno":
			errno = v
		case k == "public_key":
			cur = map[string][]string{}
			peers[v] = cur
		case cur != nil:
			cur[k] = append(cur[k], v)
		}
	}
	return errno, peers
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

func hexKey(k wgtypes.Key) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	for _, c := range k {
		b.WriteByte(digits[c>>4])
		b.WriteByte(digits[c&15])
	}
	return b.String()
}

// TestLazyPeers follows one laptop among a thousand configured peers
// through lazy loading with real wireguard-go on both ends: its first
// handshake loads it, an idle sweep unloads it with its counters kept, a
// reply the gateway sends on a connection that outlived the session loads
// it again (the gateway starts the handshake), and a restarted laptop
// loads it a third time.
func TestLazyPeers(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	gw.peers = makePeers(t, 2, 1000)
	priv, laptop := gw.addLaptop(t, 1, "127.0.0.1:"+strconv.Itoa(gw.tun.Port()))
	wantLoads := func(loaded int, loads, unloads uint64) {
		t.Helper()
		ls := gw.tun.Loads()
		ls.HandedBack = 0 // see TestInitiationsWithheldUntilChecked
		if ls != (tunnel.LoadStats{Configured: 1001, Loaded: loaded, Loads: loads, Unloads: unloads}) {
			t.Fatalf("Loads() = %+v, want 1001 configured, %d loaded, %d loads, %d unloads", ls, loaded, loads, unloads)
		}
	}
	statsOf := func() tunnel.PeerStats {
		t.Helper()
		ps, err := gw.tun.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 1001 {
			t.Fatalf("Stats has %d peers, want 1001", len(ps))
		}
		for _, p := range ps {
			if p.PublicKey == priv.PublicKey() {
				return p
			}
		}
		t.Fatal("the laptop is missing from Stats")
		return tunnel.PeerStats{}
	}
	wantLoads(0, 0, 0)

	// A handler that writes when told: the gateway's side of a connection
	// that talks after a long silence.
	push := make(chan string)
	gw.serve(81, func(c net.Conn) {
		for msg := range push {
			if _, err := io.WriteString(c, msg); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(push) })

	a := laptop()
	roundTrip(t, dialService(t, a, 80), "first handshake")
	pushed := dialService(t, a, 81)
	wantLoads(1, 1, 0)
	before := statsOf()
	if before.RxBytes == 0 || before.LastHandshake.IsZero() || !before.Endpoint.IsValid() {
		t.Fatalf("laptop stats after traffic = %+v", before)
	}

	if err := gw.tun.SweepAt(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantLoads(1, 1, 0) // a minute is not idle
	if err := gw.tun.SweepAt(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantLoads(0, 1, 1)
	// The last ACKs may land between the two readings; nothing else may
	// change, and an unloaded peer's figures stay put.
	after := statsOf()
	if after.RxBytes < before.RxBytes || after.TxBytes < before.TxBytes || !after.LastHandshake.Equal(before.LastHandshake) || after.Endpoint != before.Endpoint {
		t.Errorf("stats lost across the unload: %+v, then %+v", before, after)
	}
	if again := statsOf(); again.RxBytes != after.RxBytes || again.TxBytes != after.TxBytes {
		t.Errorf("an unloaded peer's counters moved: %+v, then %+v", after, again)
	}

	push <- "pushed after unload"
	pushed.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, len("pushed after unload"))
	if _, err := io.ReadFull(pushed, buf); err != nil {
		t.Fatalf("read what the gateway sent to an unloaded peer: %v", err)
	}
	wantLoads(1, 2, 1)

	if err := gw.tun.SweepAt(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	a.Close() // the laptop sleeps; its session is gone when it wakes
	b := laptop()
	roundTrip(t, dialService(t, b, 80), "after a restart")
	wantLoads(1, 3, 2)
	if final := statsOf(); final.RxBytes <= after.RxBytes || final.TxBytes <= after.TxBytes {
		t.Errorf("counters went from %+v to %+v, want them to keep growing", after, final)
	}
}

// holder makes calls wait while it is held.
type holder struct {
	mu   sync.Mutex
	hold chan struct{}
}

// wait returns once the holder is not held.
func (h *holder) wait() {
	h.mu.Lock()
	c := h.hold
	h.mu.Unlock()
	if c != nil {
		<-c
	}
}

// setHold holds or releases; releasing twice is harmless.
func (h *holder) setHold(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on {
		h.hold = make(chan struct{})
	} else if h.hold != nil {
		close(h.hold)
		h.hold = nil
	}
}

// holdTUN stands for a netstack slower than the receive path, as on a
// gateway with one busy core: while held, writes wait for the release.
type holdTUN struct {
	tun.Device
	holder
}

func (d *holdTUN) Write(bufs [][]byte, offset int) (int, error) {
	d.wait()
	return d.Device.Write(bufs, offset)
}

// waitFor polls cond every millisecond for up to 10 s.
func waitFor(cond func() bool) bool { return waitWithin(10*time.Second, cond) }

// waitWithin is waitFor with its bound.
func waitWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// checksumServer serves port on gw: it reads each connection to its end
// and sends the byte count and a checksum.
func checksumServer(gw *gateway, port uint16) <-chan [2]uint64 {
	sums := make(chan [2]uint64, 1)
	gw.serve(port, func(c net.Conn) {
		var n, sum uint64
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			for _, b := range buf[:k] {
				sum = sum*31 + uint64(b)
			}
			n += uint64(k)
			if err != nil {
				sums <- [2]uint64{n, sum}
				return
			}
		}
	})
	return sums
}

// uploadChecked writes size patterned bytes on conn, closes it, and checks
// what a checksumServer received.
func uploadChecked(t *testing.T, conn net.Conn, size int, sums <-chan [2]uint64) {
	t.Helper()
	data := make([]byte, size)
	var want uint64
	for i := range data {
		data[i] = byte(i * 7 >> 3)
		want = want*31 + uint64(data[i])
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := conn.Write(data); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case got := <-sums:
		if got != [2]uint64{uint64(size), want} {
			t.Fatalf("handler got %d bytes (sum %x), want %d (sum %x)", got[0], got[1], size, want)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("upload did not finish")
	}
}

// forgery returns a UDP socket to the gateway's port and a transport
// message of size bytes for session index, with nothing valid in it.
func forgery(t *testing.T, gw *gateway, size int, index uint32) (*net.UDPConn, []byte) {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(gw.tun.Port()))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	msg := make([]byte, size)
	binary.LittleEndian.PutUint32(msg, 4) // transport
	binary.LittleEndian.PutUint32(msg[4:8], index)
	return c, msg
}

// TestReceiveGate runs the receive gate with real wireguard-go on both
// ends: forged transport datagrams never count; a burst of datagrams (no
// congestion control to pace it) meeting a held netstack makes the gate
// hold wireguard-go's receive loop, and the release lets it go once half
// are written; an upload through the gate arrives whole and in order.
func TestReceiveGate(t *testing.T) {
	checkGoroutines(t)
	var held *holdTUN
	gw := newGatewayTun(t, netstack.Config{}, tunnel.Config{}, func(d tun.Device) tun.Device {
		held = &holdTUN{Device: d}
		return held
	}, nil)
	const size = 8 << 20
	sums := checksumServer(gw, 9)
	c, _ := gw.addClient(t, 1, false)
	echoConn := dialService(t, c, 80) // the handshake is done

	// Forged transport datagrams, for an index devgate never handed out,
	// then a round trip: by its end the receive loop has read them all.
	forger, forged := forgery(t, gw, 1452, 0xab)
	for range 2000 {
		if _, err := forger.Write(forged); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip(t, echoConn, "after the forgeries")
	if !waitFor(func() bool { return gw.tun.GateCount() == 0 }) {
		t.Fatalf("the gate still counts %d datagrams after the round trip", gw.tun.GateCount())
	}
	if gs := gw.tun.ReceiveGate(); gs != (tunnel.GateStats{}) {
		t.Fatalf("2,000 forged datagrams moved the gate: %+v", gs)
	}

	// A burst into a held netstack. With the gate's 2 ms windows, this
	// goroutine off the CPU for two of them (a loaded machine) let the
	// wait end by writing the session off, unseen, and twice ungated it;
	// here the windows are long enough for the wait to be seen and end
	// drained. TestReceiveGateForgedAtLiveIndex covers the write-offs.
	gw.tun.SetReceiveGateStall(time.Minute)
	udp, err := c.DialContext(ctxTimeout(t, 5*time.Second), "udp", netip.AddrPortFrom(service, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	payload := make([]byte, 1200)
	held.setHold(true)
	for range 600 {
		udp.Write(payload) // the port is closed: some writes fail on the ICMP errors
	}
	engaged := waitFor(gw.tun.GateWaiting)
	held.setHold(false)
	if !engaged {
		t.Fatalf("600 datagrams into a held netstack never made the gate wait (count %d)", gw.tun.GateCount())
	}
	if !waitFor(func() bool { return gw.tun.GateCount() == 0 }) {
		t.Fatalf("the gate still counts %d datagrams after the release", gw.tun.GateCount())
	}
	// The waiting loop counts its drain once it runs again.
	waitFor(func() bool { return !gw.tun.GateWaiting() })
	if gs := gw.tun.ReceiveGate(); gs.Drained == 0 || gs.WrittenOff != 0 {
		t.Fatalf("the gate after the burst: %+v, want its waits drained, none written off", gs)
	}
	gw.tun.SetReceiveGateStall(0) // the upload meets the real window

	conn := dialService(t, c, 9)
	uploadChecked(t, conn, size, sums)
	t.Logf("after the upload: %+v", gw.tun.ReceiveGate())
}

// TestReceiveGateForgedAtLiveIndex floods the gateway with 50,000
// datagrams that carry the live session's index (as anyone who sees the
// traffic could send) during an upload. wireguard-go drops them after the
// gate counted them; the gate must write them off and, at the second time,
// stop counting that session (two stalls, not one per 256 forgeries), and
// the upload must arrive whole.
func TestReceiveGateForgedAtLiveIndex(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	const size = 8 << 20
	sums := checksumServer(gw, 9)
	c, _ := gw.addClient(t, 1, false)
	conn := dialService(t, c, 9)
	idx := gw.tun.GateSessions()
	if len(idx) != 1 {
		t.Fatalf("the gate knows sessions %v after one handshake, want one", idx)
	}

	forger, forged := forgery(t, gw, 100, idx[0])
	flooded := make(chan int)
	go func() {
		n := 0
		for i := range 50_000 {
			binary.LittleEndian.PutUint64(forged[8:16], uint64(i)) // counters
			if _, err := forger.Write(forged); err == nil {
				n++
			}
		}
		flooded <- n
	}()

	uploadChecked(t, conn, size, sums)
	n := <-flooded
	// The receive loop reads the rest of the flood (the socket drops what
	// it cannot hold): by then the session is ungated and counts nothing.
	if !waitFor(func() bool { return gw.tun.GateCount() == 0 && gw.tun.ReceiveGate().WrittenOff >= 2 }) {
		t.Errorf("after %d forged datagrams the gate counts %d, %+v; want 0 and two write-offs", n, gw.tun.GateCount(), gw.tun.ReceiveGate())
	}
	gs := gw.tun.ReceiveGate()
	t.Logf("%d forged datagrams sent; receive gate: %+v", n, gs)
	// Every write-off strikes the one session; the second ungates it.
	if gs.WrittenOff != 2 {
		t.Errorf("%d write-offs for one session's forgeries, want 2", gs.WrittenOff)
	}
}

// recordingRelay forwards UDP between WireGuard clients and the gateway,
// as a network path would, and keeps a copy of every handshake initiation
// the clients send: what an eavesdropper could capture. The gateway sees
// every client at the relay's one upstream address.
type recordingRelay struct {
	down, up *net.UDPConn
	client   atomic.Pointer[net.UDPAddr] // the last client heard from
	copies   atomic.Int32                // extra copies of each initiation, sent on from dup
	dup      *net.UDPConn                // another address at the gateway's port
	mu       sync.Mutex
	inits    [][]byte
}

func newRecordingRelay(t *testing.T, gw *gateway) *recordingRelay {
	t.Helper()
	down, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: gw.tun.Port()})
	if err != nil {
		down.Close()
		t.Fatal(err)
	}
	dup, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: gw.tun.Port()})
	if err != nil {
		down.Close()
		up.Close()
		t.Fatal(err)
	}
	r := &recordingRelay{down: down, up: up, dup: dup}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // clients to the gateway
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := down.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.client.Store(from)
			up.Write(buf[:n])
			if n == device.MessageInitiationSize && binary.LittleEndian.Uint32(buf) == device.MessageInitiationType {
				r.mu.Lock()
				r.inits = append(r.inits, bytes.Clone(buf[:n]))
				r.mu.Unlock()
				// After the original: a copy checked first would be
				// answered at its own address, as it would be by
				// wireguard-go without the tunnel.
				for range r.copies.Load() {
					r.dup.Write(buf[:n])
				}
			}
		}
	}()
	go func() { // the gateway to the last client
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if to := r.client.Load(); to != nil {
				down.WriteToUDP(buf[:n], to)
			}
		}
	}()
	t.Cleanup(func() {
		down.Close()
		up.Close()
		dup.Close()
		wg.Wait()
	})
	return r
}

// initiations returns the initiations recorded so far.
func (r *recordingRelay) initiations() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.inits)
}

// TestReplayedInitiationsAfterUnload captures a laptop's handshake
// initiations through a relay (the one that loaded its peer, and one sent
// while it was loaded), lets the idle sweep unload the peer at once, and
// replays them from another address, with real wireguard-go on both ends:
// neither loads the peer nor moves its endpoint, and the laptop connects
// again.
func TestReplayedInitiationsAfterUnload(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	relay := newRecordingRelay(t, gw)
	priv, laptop := gw.addLaptop(t, 1, relay.down.LocalAddr().String())
	a := laptop()
	roundTrip(t, dialService(t, a, 80), "loads the peer")
	a.Close()
	loadedBy := gw.tun.LatestSealed(priv.PublicKey())
	// wireguard-go drops an initiation that comes within
	// HandshakeInitationRate of the last one it took as a flood; the
	// laptop would retry 5 s later.
	time.Sleep(2 * device.HandshakeInitationRate)
	b := laptop() // a restart while loaded: its initiation goes to wireguard-go
	roundTrip(t, dialService(t, b, 80), "while loaded")
	b.Close()
	captured := relay.initiations()
	if ls := gw.tun.Loads(); len(captured) < 2 || ls.Loads != 1 {
		t.Fatalf("%d initiations captured, loads %+v; want two or more, one load", len(captured), ls)
	}
	// The checker opens b's initiation beside wireguard-go's handshake.
	if !waitFor(func() bool { return gw.tun.LatestSealed(priv.PublicKey()).After(loadedBy) }) {
		t.Fatal("the checker did not open the initiation sent while the peer was loaded")
	}
	if err := gw.tun.SweepAt(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	endpointOf := func() netip.AddrPort {
		t.Helper()
		ps, err := gw.tun.Stats()
		if err != nil || len(ps) != 1 {
			t.Fatalf("Stats = %+v, %v; want one peer", ps, err)
		}
		return ps[0].Endpoint
	}
	relayed := endpointOf()
	if want := relay.up.LocalAddr().(*net.UDPAddr).AddrPort(); relayed != want {
		t.Fatalf("peer endpoint %v, want the relay's %v", relayed, want)
	}

	replayer, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: gw.tun.Port()})
	if err != nil {
		t.Fatal(err)
	}
	defer replayer.Close()
	for _, msg := range captured {
		if _, err := replayer.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	if !waitFor(func() bool { return gw.tun.Loads().Replays == uint64(len(captured)) }) {
		t.Fatalf("after %d replayed initiations: %+v", len(captured), gw.tun.Loads())
	}
	// The peer may be loaded again meanwhile, by the gateway's
	// retransmission to a laptop that closed before acknowledging; that
	// load keeps the relay's endpoint, where a replay's would move it.
	if ep := endpointOf(); ep != relayed {
		t.Fatalf("peer endpoint moved to %v by a replay: %+v", ep, gw.tun.Loads())
	}

	// wireguard-go seals times in steps of 2^24 ns (16.8 ms): an
	// initiation in b's step would be taken for b's, by wireguard-go as
	// by the floor.
	time.Sleep(2 * device.HandshakeInitationRate)
	c := laptop()
	roundTrip(t, dialService(t, c, 80), "after the replays")
	if ls := gw.tun.Loads(); ls.Loaded != 1 || ls.Replays != uint64(len(captured)) {
		t.Fatalf("the laptop's own initiation: %+v, want the peer loaded, no more replays", ls)
	}
}

// TestInitiationsWithheldUntilChecked sends every initiation of a laptop
// to the gateway three times, twice more from another address, through
// real wireguard-go on both ends. wireguard-go gets each initiation once,
// from the checker, and answers it once: before, it could take the
// original after the checker had loaded the peer and then the checker's
// copy too, and two answers to one initiation left the laptop and the
// gateway with different sessions for 15 s. The same holds for a
// restarted laptop, whose peer is still loaded.
func TestInitiationsWithheldUntilChecked(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	relay := newRecordingRelay(t, gw)
	relay.copies.Store(2)
	_, laptop := gw.addLaptop(t, 1, relay.down.LocalAddr().String())
	answeredOnce := func(when string) {
		t.Helper()
		// Each answer names a session the receive gate records.
		sent := len(relay.initiations())
		if hb, answers := gw.tun.Loads().HandedBack, len(gw.tun.GateSessions()); hb != uint64(sent) || answers != sent {
			t.Fatalf("%s: %d initiations sent three times each: %d handed back, %d answered; want %d and %d", when, sent, hb, answers, sent, sent)
		}
	}
	a := laptop()
	roundTrip(t, dialService(t, a, 80), "first connection")
	a.Close()
	answeredOnce("first connection")

	time.Sleep(2 * device.HandshakeInitationRate) // see TestReplayedInitiationsAfterUnload
	b := laptop()
	roundTrip(t, dialService(t, b, 80), "after a restart")
	answeredOnce("after a restart")
}

// TestSecondLaptopAtSameAddress: a laptop whose initiation comes from the
// address and port a loaded peer's came from (a NAT that gave the port to
// another laptop) connects with its first initiation. When initiations
// from a loaded peer's address went to wireguard-go at once, wireguard-go
// dropped it (that peer was not loaded yet), and the laptop waited 5 s
// to retry.
func TestSecondLaptopAtSameAddress(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	relay := newRecordingRelay(t, gw) // both laptops reach the gateway from its one socket
	_, first := gw.addLaptop(t, 1, relay.down.LocalAddr().String())
	_, second := gw.addLaptop(t, 2, relay.down.LocalAddr().String())
	a := first()
	roundTrip(t, dialService(t, a, 80), "first laptop")
	a.Close() // its peer stays loaded at the gateway
	before := len(relay.initiations())
	b := second()
	roundTrip(t, dialService(t, b, 80), "second laptop")
	if n := len(relay.initiations()) - before; n != 1 {
		t.Fatalf("the second laptop sent %d initiations before its connection went through, want 1", n)
	}
	if ls := gw.tun.Loads(); ls.Loaded != 2 {
		t.Fatalf("Loads() = %+v, want both peers loaded", ls)
	}
}

// holdBind stands for a socket that cannot send for a while: while held,
// sends wait for the release.
type holdBind struct {
	conn.Bind
	holder
}

func (b *holdBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.wait()
	return b.Bind.Send(bufs, ep)
}

// TestSendGateHeldSocket holds the gateway's socket in the middle of a
// download, with real wireguard-go on both ends: the packets the netstack
// goes on producing pile up inside wireguard-go until the send gate holds
// its reader; with nothing sent for 2 ms it forgets its count (it cannot
// tell a stuck socket from a peer whose packets wireguard-go holds); once
// the socket sends again every byte arrives in order.
func TestSendGateHeldSocket(t *testing.T) {
	checkGoroutines(t)
	var held *holdBind
	gw := newGatewayTun(t, netstack.Config{}, tunnel.Config{}, nil, func(b conn.Bind) conn.Bind {
		held = &holdBind{Bind: b}
		return held
	})
	// How many packets the held socket traps depends on the flows'
	// windows, which a loaded machine keeps small (116 seen), so the gate
	// waits above 64 here instead of 512.
	gw.tun.SetSendGateLimit(64)
	const size = 16 << 20
	pattern := func(i int) byte { return byte(i * 7 >> 3) }
	gw.serve(9, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		buf := make([]byte, 64<<10)
		for off := 0; off < size; off += len(buf) {
			for i := range buf {
				buf[i] = pattern(off + i)
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	c, _ := gw.addClient(t, 1, false)
	// Three downloads: together their windows are more than sendLimit
	// packets (one alone had 370-470 in flight).
	const flows = 3
	var got [flows]atomic.Int64
	result := make(chan error, flows)
	for f := range flows {
		down := dialService(t, c, 9)
		down.SetDeadline(time.Now().Add(2 * time.Minute))
		go func() { // the laptop reads throughout
			buf := make([]byte, 64<<10)
			for n := 0; n < size; {
				k, err := down.Read(buf)
				for i, b := range buf[:k] {
					if b != pattern(n+i) {
						result <- fmt.Errorf("flow %d: byte %d is %d, want %d", f, n+i, b, pattern(n+i))
						return
					}
				}
				n += k
				got[f].Store(int64(n))
				if err != nil {
					result <- fmt.Errorf("flow %d: after %d bytes: %w", f, n, err)
					return
				}
			}
			result <- nil
		}()
	}
	// Three 16 MiB downloads under -race beside other packages' tests
	// took more than 10 s to reach 4 MiB each once.
	if !waitWithin(time.Minute, func() bool { // the windows open
		for f := range flows {
			if got[f].Load() < 4<<20 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the downloads did not get going")
	}

	held.setHold(true)
	t.Cleanup(func() { held.setHold(false) })
	if !waitFor(func() bool { return gw.tun.SendGate().Forgotten > 0 }) {
		t.Fatalf("the send gate never waited behind a held socket: %+v, %d inside", gw.tun.SendGate(), gw.tun.SendGateCount())
	}
	held.setHold(false)
	for range flows {
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("a download stopped")
		}
	}
	t.Logf("send gate: %+v", gw.tun.SendGate())
}
