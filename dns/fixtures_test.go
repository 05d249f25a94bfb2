package dns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
)

// The fixture: two organizations, each with its default network.
//
//	acme/default (A): peers alice, carol; apps hello (2 started, 2 stopped),
//	                  web (stopped only), big (40 started: large TXT)
//	beta/default (B): peer bob; apps secret (its Flycast address is in A's
//	                  network: exposed into A) and bapp (Flycast in B)
var (
	netA = store.NetworkKey{Org: "acme", Network: store.DefaultNetwork}
	netB = store.NetworkKey{Org: "beta", Network: store.DefaultNetwork}

	prefixA = peers.NetworkPrefix(1)
	prefixB = peers.NetworkPrefix(2)

	helloFlycast  = peers.Flycast(prefixA, 1)
	webFlycast    = peers.Flycast(prefixA, 2)
	secretFlycast = peers.Flycast(prefixA, 3) // app of B, exposed into A
	bappFlycast   = peers.Flycast(prefixB, 1)
)

const gatewayRegion = "fra"

func mustPeer(p netip.Prefix, n uint32) netip.Addr {
	a, err := peers.Peer(p, 1, n)
	if err != nil {
		panic(err)
	}
	return a
}

func mustMachine(p netip.Prefix, n uint32) netip.Addr {
	a, err := peers.Machine(p, 1, n)
	if err != nil {
		panic(err)
	}
	return a
}

// machine IDs are 14 hex digits, like Fly's.
func machineID(n int) string { return fmt.Sprintf("%014x", 0xd000000+n) }

func fixtureSnapshot() *store.Snapshot {
	orgs := []store.Org{{Name: "acme"}, {Name: "beta"}}
	networks := []store.Network{
		{Org: "acme", Name: store.DefaultNetwork, Number: 1, Prefix: prefixA},
		{Org: "beta", Name: store.DefaultNetwork, Number: 2, Prefix: prefixB},
	}
	ps := []store.Peer{
		{Org: "acme", Network: store.DefaultNetwork, Name: "alice", Address: mustPeer(prefixA, 1)},
		{Org: "acme", Network: store.DefaultNetwork, Name: "carol", Address: mustPeer(prefixA, 2)},
		{Org: "beta", Network: store.DefaultNetwork, Name: "bob", Address: mustPeer(prefixB, 1)},
	}
	apps := []store.App{
		{Name: "hello", Org: "acme", Network: store.DefaultNetwork, Flycast: true},
		{Name: "web", Org: "acme", Network: store.DefaultNetwork, Flycast: true},
		{Name: "big", Org: "acme", Network: store.DefaultNetwork},
		{Name: "secret", Org: "beta", Network: store.DefaultNetwork, Flycast: true},
		{Name: "bapp", Org: "beta", Network: store.DefaultNetwork, Flycast: true},
	}
	ips := []store.IP{
		{Address: helloFlycast, App: "hello", Type: store.IPPrivate, Org: "acme", Network: store.DefaultNetwork},
		{Address: webFlycast, App: "web", Type: store.IPPrivate, Org: "acme", Network: store.DefaultNetwork},
		{Address: secretFlycast, App: "secret", Type: store.IPPrivate, Org: "acme", Network: store.DefaultNetwork},
		{Address: bappFlycast, App: "bapp", Type: store.IPPrivate, Org: "beta", Network: store.DefaultNetwork},
	}
	ms := []store.Machine{
		{ID: machineID(1), App: "hello", Region: "ams", State: store.MachineStarted, Address: mustMachine(prefixA, 1)},
		{ID: machineID(2), App: "hello", Region: "fra", State: store.MachineStarted, Address: mustMachine(prefixA, 2)},
		{ID: machineID(3), App: "hello", Region: "ams", State: store.MachineStopped, Address: mustMachine(prefixA, 3)},
		{ID: machineID(4), App: "hello", Region: "sjc", State: store.MachineStopped, Address: mustMachine(prefixA, 4)},
		{ID: machineID(5), App: "web", Region: "ams", State: store.MachineStopped, Address: mustMachine(prefixA, 5)},
		{ID: machineID(6), App: "secret", Region: "ord", State: store.MachineStarted, Address: mustMachine(prefixB, 6)},
		{ID: machineID(7), App: "bapp", Region: "ord", State: store.MachineStarted, Address: mustMachine(prefixB, 7)},
	}
	for i := 0; i < 40; i++ {
		n := 100 + i
		ms = append(ms, store.Machine{ID: machineID(n), App: "big", Region: "iad", State: store.MachineStarted, Address: mustMachine(prefixA, uint32(n))})
	}
	return store.NewSnapshot(orgs, networks, ps, apps, ips, ms)
}

// Loopback sources stand for the two networks' peers: Linux answers on all
// of 127/8, so a client bound to 127.0.0.2 "is" a peer of A.
var (
	srcA     = netip.MustParseAddr("127.0.0.2")
	srcB     = netip.MustParseAddr("127.0.0.3")
	srcNoNet = netip.MustParseAddr("127.0.0.4")
)

func loopbackNetworkFor(remote net.Addr) (store.NetworkKey, bool) {
	ip, ok := addrIP(remote)
	switch {
	case !ok:
		return store.NetworkKey{}, false
	case ip == srcA:
		return netA, true
	case ip == srcB:
		return netB, true
	}
	return store.NetworkKey{}, false
}

// testServer is a Server on real 127.0.0.1 UDP and TCP sockets.
type testServer struct {
	*Server
	udpAddr, tcpAddr string
	done             chan error // Serve and ServePacket results
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.Snapshot == nil {
		snap := fixtureSnapshot()
		cfg.Snapshot = func() *store.Snapshot { return snap }
	}
	if cfg.NetworkFor == nil {
		cfg.NetworkFor = loopbackNetworkFor
	}
	if cfg.Region == "" {
		cfg.Region = gatewayRegion
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	}
	ts := &testServer{Server: New(cfg), udpAddr: pc.LocalAddr().String(), tcpAddr: l.Addr().String(), done: make(chan error, 2)}
	go func() { ts.done <- ts.ServePacket(pc) }()
	go func() { ts.done <- ts.Serve(l) }()
	t.Cleanup(func() { ts.Close() })
	return ts
}

// query sends one question from src over net ("udp" or "tcp") and returns
// the reply. edns > 0 adds an OPT record with that UDP size.
func query(t testing.TB, addr, network string, src netip.Addr, name string, qtype uint16, edns uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	r, err := exchange(addr, network, src, m)
	if err != nil {
		t.Fatalf("%s %s %s from %s: %v", network, name, mdns.TypeToString[qtype], src, err)
	}
	return r
}

func exchange(addr, network string, src netip.Addr, m *mdns.Msg) (*mdns.Msg, error) {
	var local net.Addr = &net.UDPAddr{IP: src.AsSlice()}
	if network == "tcp" {
		local = &net.TCPAddr{IP: src.AsSlice()}
	}
	c := &mdns.Client{Net: network, Timeout: 10 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// rdata renders answers compactly: AAAA/A as the address, TXT as its strings
// joined (chunk boundaries are checked separately).
func rdata(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *mdns.AAAA:
			out = append(out, rr.AAAA.String())
		case *mdns.A:
			out = append(out, rr.A.String())
		case *mdns.TXT:
			out = append(out, strings.Join(rr.Txt, ""))
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

// checkNoLeak waits (bounded) for the goroutine count to fall back to base.
func checkNoLeak(t *testing.T, base int) {
	t.Helper()
	var n int
	for i := 0; i < 100; i++ {
		n = runtime.NumGoroutine()
		if n <= base {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<16)
	t.Errorf("goroutines: %d after, %d before\n%s", n, base, buf[:runtime.Stack(buf, true)])
}

func netUDPAddr(ap netip.AddrPort) net.Addr { return net.UDPAddrFromAddrPort(ap) }
func netTCPAddr(ap netip.AddrPort) net.Addr { return net.TCPAddrFromAddrPort(ap) }

func runtimeGoroutines() int { return runtime.NumGoroutine() }

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
