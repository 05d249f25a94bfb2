package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/devgate/devgate/peers"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// TestMain checks that no gVisor buffer or packet leaks once every test has
// closed its stacks. Here both ends are gVisor stacks this package closes
// properly, so a leak is ours.
func TestMain(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

var (
	testNet  = peers.NetworkPrefix(7)
	testSvc  = peers.Flycast(testNet, 1)
	testPeer = mustPeer(testNet, 1)
)

func mustPeer(p netip.Prefix, n uint32) netip.Addr {
	a, err := peers.Peer(p, 1, n)
	if err != nil {
		panic(err)
	}
	return a
}

type router struct {
	mu     sync.Mutex
	tcp    map[uint16]TCPHandler
	exists map[netip.Addr]bool
}

func (r *router) RouteTCP(_, dst netip.AddrPort) TCPHandler {
	r.mu.Lock()
	defer r.mu.Unlock()
	if dst.Addr() != testSvc {
		return nil
	}
	return r.tcp[dst.Port()]
}

func (r *router) Exists(a netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exists[a]
}

type handlerFunc func(TCPRequest)

func (f handlerFunc) ServeTCP(r TCPRequest) { f(r) }

func echoHandler() TCPHandler {
	return handlerFunc(func(r TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
}

func newTestStack(t testing.TB, cfg Config) (*Stack, *router) {
	t.Helper()
	r := &router{tcp: map[uint16]TCPHandler{7: echoHandler()}, exists: map[netip.Addr]bool{testSvc: true}}
	cfg.Router = r
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, r
}

// peerQueueLen is the laptop stack's outbound queue. gVisor's channel
// endpoint drops what does not fit, so it holds more than the laptop's TCP
// can have in flight (its send buffer, at most 4 MiB, is 3,178 full
// segments): a pump that falls behind on a busy machine must delay the
// laptop's packets, not lose them. With 512, a 4 MiB upload on a loaded
// machine lost ~500 segments at once, and the laptop's gVisor, repairing
// one segment per 200 ms timeout, did not finish in 20 s.
const peerQueueLen = 4096

// peerStack is a second gVisor stack playing the laptop, wired straight to
// the Stack's TUN (no WireGuard: this package's tests are about the stack).
type peerStack struct {
	s      *stack.Stack
	ep     *channel.Endpoint
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newPeerStack(t testing.TB, gw *Stack, addr netip.Addr) *peerStack {
	t.Helper()
	p := &peerStack{
		ep: channel.New(peerQueueLen, DefaultMTU, ""),
		s: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
		}),
	}
	if err := p.s.CreateNIC(1, p.ep); err != nil {
		t.Fatal(err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom16(addr.As16()).WithPrefix()}
	if err := p.s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	p.s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	dev := gw.TUN()
	p.wg.Add(2)
	go func() { // laptop -> gateway
		defer p.wg.Done()
		for {
			pkt := p.ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			v := pkt.ToView()
			pkt.DecRef()
			dev.Write([][]byte{v.AsSlice()}, 0)
			v.Release()
		}
	}()
	go func() { // gateway -> laptop
		defer p.wg.Done()
		bufs := make([][]byte, 16)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := dev.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			for i := range n {
				pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(bufs[i][:sizes[i]])})
				p.ep.InjectInbound(ipv6.ProtocolNumber, pkt)
				pkt.DecRef()
			}
		}
	}()
	t.Cleanup(func() {
		gw.Close() // ends the reader
		cancel()
		p.wg.Wait()
		p.s.Close()
		p.s.Wait()
		p.s.Destroy()
		p.ep.Close()
	})
	return p
}

func (p *peerStack) dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, p.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom16(dst.Addr().As16()), Port: dst.Port()}, ipv6.ProtocolNumber)
}

// dialWithin dials a test service port through p, failing the test if it
// cannot within d; the connection's deadline is d away and it is closed
// when the test ends.
func dialWithin(t testing.TB, p *peerStack, port uint16, d time.Duration) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := p.dial(ctx, netip.AddrPortFrom(testSvc, port))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(d))
	t.Cleanup(func() { c.Close() })
	return c
}

func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

func TestTCPFlows(t *testing.T) {
	checkGoroutines(t)
	gw, r := newTestStack(t, Config{})
	answered := make(chan error, 1)
	r.tcp[9] = handlerFunc(func(q TCPRequest) { // returns without answering
		if q.Src().Addr() != testPeer || q.Dst() != netip.AddrPortFrom(testSvc, 9) {
			answered <- errors.New("wrong Src/Dst")
			return
		}
		answered <- nil
	})
	r.tcp[10] = handlerFunc(func(q TCPRequest) {
		c, err := q.Accept()
		if err == nil {
			c.Close()
		}
		_, err2 := q.Accept()
		q.Refuse()
		if !errors.Is(err2, ErrAnswered) {
			err = errors.New("second Accept did not fail")
		}
		answered <- err
	})
	p := newPeerStack(t, gw, testPeer)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := dialWithin(t, p, 7, 10*time.Second)
	msg := make([]byte, 300_000)
	for i := range msg {
		msg[i] = byte(i)
	}
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo: err = %v, equal = %v", err, string(got) == string(msg))
	}
	c.Close()

	for _, port := range []uint16{8, 9} { // no route; handler that never answers
		_, err := p.dial(ctx, netip.AddrPortFrom(testSvc, port))
		if err == nil || !errors.Is(err, errConnRefused(err)) {
			t.Errorf("port %d: err = %v, want connection refused", port, err)
		}
	}
	if err := <-answered; err != nil {
		t.Error(err)
	}
	if c, err := p.dial(ctx, netip.AddrPortFrom(testSvc, 10)); err != nil {
		t.Errorf("port 10: %v", err)
	} else {
		c.Close()
	}
	if err := <-answered; err != nil {
		t.Error(err)
	}
	st := gw.Stats()
	if st.RefusedNoRoute != 1 || st.TCPAccepted != 2 {
		t.Errorf("stats = %+v, want 1 refused (no route) and 2 accepted", st)
	}
	gw.mu.Lock()
	if len(gw.synPeer) != 0 {
		t.Errorf("SYN budget not released: %v", gw.synPeer)
	}
	gw.mu.Unlock()
}

// errConnRefused returns err itself when it is a refusal, so errors.Is
// matches; gonet returns the tcpip error text wrapped in a net.OpError.
func errConnRefused(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil && oe.Err.Error() == (&tcpip.ErrConnectionRefused{}).String() {
		return err
	}
	return errors.New("not refused")
}

func TestListenAddressRefcount(t *testing.T) {
	checkGoroutines(t)
	gw, _ := newTestStack(t, Config{})
	a := peers.Resolver(testNet)
	hasAddr := func() bool {
		for _, pa := range gw.stack.AllAddresses()[nicID] {
			if pa.AddressWithPrefix.Address == tcpip.AddrFrom16(a.As16()) {
				return true
			}
		}
		return false
	}
	pc, err := gw.ListenUDP(netip.AddrPortFrom(a, 53))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := gw.ListenTCP(netip.AddrPortFrom(a, 53))
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	pc.Close()
	if !hasAddr() {
		t.Fatal("address removed while a listener still uses it")
	}
	ln.Close()
	if hasAddr() {
		t.Fatal("address kept after every listener closed")
	}
	if _, err := gw.ListenUDP(netip.MustParseAddrPort("127.0.0.1:53")); err == nil {
		t.Error("IPv4 listen accepted")
	}
}

func TestCloseIdempotent(t *testing.T) {
	checkGoroutines(t)
	gw, _ := newTestStack(t, Config{})
	dev := gw.TUN()
	if ev := <-dev.Events(); ev != 1 { // tun.EventUp
		t.Errorf("first event = %v, want EventUp", ev)
	}
	gw.Close()
	gw.Close()
	dev.Close()
	if _, err := dev.Read([][]byte{make([]byte, 100)}, []int{0}, 0); err == nil {
		t.Error("Read after Close succeeded")
	}
	if _, err := gw.ListenTCP(netip.AddrPortFrom(testSvc, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("ListenTCP after Close: %v, want ErrClosed", err)
	}
}
