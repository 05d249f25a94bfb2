package dns

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// upstream is a real miekg resolver on 127.0.0.1 (UDP and TCP, same port)
// standing in for the host's resolver. It answers example.com A with
// 192.0.2.1 over UDP and 192.0.2.2 over TCP (so tests see the transport),
// and large.example TXT with about 4 KB.
type upstream struct {
	addr string
	udp  *mdns.Server
	tcp  *mdns.Server
}

var largeTXT = func() []string {
	var out []string
	for i := 0; i < 20; i++ {
		out = append(out, strings.Repeat(string(rune('a'+i)), 200))
	}
	return out
}()

func startUpstream(t testing.TB) *upstream {
	t.Helper()
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg).SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		_, isTCP := w.RemoteAddr().(*net.TCPAddr)
		switch {
		case q.Name == "example.com." && q.Qtype == mdns.TypeA:
			a := net.IPv4(192, 0, 2, 1)
			if isTCP {
				a = net.IPv4(192, 0, 2, 2)
			}
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300}, A: a})
		case q.Name == "large.example." && q.Qtype == mdns.TypeTXT:
			m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: 300}, Txt: largeTXT})
		default:
			m.Rcode = mdns.RcodeNameError
		}
		size := mdns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
			m.SetEdns0(opt.UDPSize(), false)
		}
		if isTCP {
			size = mdns.MaxMsgSize
		}
		m.Truncate(size)
		if err := w.WriteMsg(m); err != nil {
			t.Logf("upstream write: %v", err)
		}
	})
	// UDP and TCP on the same port, like a real resolver: a few attempts,
	// since the TCP port of a fresh UDP port may be taken.
	var pc net.PacketConn
	var l net.Listener
	for i := 0; l == nil; i++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if i == 20 {
				t.Fatalf("no TCP port matching a UDP one: %v", err)
			}
		}
	}
	u := &upstream{addr: pc.LocalAddr().String()}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	u.udp = &mdns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: notify}
	u.tcp = &mdns.Server{Listener: l, Handler: h, NotifyStartedFunc: notify}
	errc := make(chan error, 2)
	go func() { errc <- u.udp.ActivateAndServe() }()
	go func() { errc <- u.tcp.ActivateAndServe() }()
	<-started
	<-started
	t.Cleanup(func() {
		u.udp.Shutdown()
		u.tcp.Shutdown()
		<-errc
		<-errc
	})
	return u
}

// deadAddr returns a 127.0.0.1 address where nothing listens (UDP or TCP):
// queries there fail at once with "connection refused".
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestForward(t *testing.T) {
	up := startUpstream(t)
	ts := startServer(t, Config{Upstreams: []string{deadAddr(t), up.addr}})
	for _, c := range []struct {
		network string
		want    string
	}{{"udp", "192.0.2.1"}, {"tcp", "192.0.2.2"}} {
		t.Run(c.network, func(t *testing.T) {
			addr := ts.udpAddr
			if c.network == "tcp" {
				addr = ts.tcpAddr
			}
			m := new(mdns.Msg).SetQuestion("example.com.", mdns.TypeA)
			m.Id = 4242
			r, err := exchange(addr, c.network, srcA, m)
			if err != nil {
				t.Fatal(err)
			}
			if r.Id != 4242 || r.Rcode != mdns.RcodeSuccess || r.Authoritative {
				t.Fatalf("reply id %d rcode %s aa %v", r.Id, mdns.RcodeToString[r.Rcode], r.Authoritative)
			}
			if got := rdata(r.Answer); len(got) != 1 || got[0] != c.want {
				t.Fatalf("answers %v, want %s (forwarded over %s)", got, c.want, c.network)
			}
			// An upstream NXDOMAIN passes through.
			r = query(t, addr, c.network, srcA, "nothing.example", mdns.TypeA, 0)
			if r.Rcode != mdns.RcodeNameError {
				t.Fatalf("rcode %s, want upstream's NXDOMAIN", mdns.RcodeToString[r.Rcode])
			}
		})
	}
}

func TestForwardFailures(t *testing.T) {
	for _, c := range []struct {
		name      string
		upstreams []string
	}{
		{"upstream down", []string{deadAddr(t)}},
		{"no upstreams", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, Config{Upstreams: c.upstreams, UpstreamTimeout: 5 * time.Second})
			for _, network := range []string{"udp", "tcp"} {
				addr := map[string]string{"udp": ts.udpAddr, "tcp": ts.tcpAddr}[network]
				r := query(t, addr, network, srcA, "example.com", mdns.TypeA, 0)
				if r.Rcode != mdns.RcodeServerFailure {
					t.Errorf("%s: rcode %s, want SERVFAIL", network, mdns.RcodeToString[r.Rcode])
				}
			}
			// Private names never depend on upstreams.
			r := query(t, ts.udpAddr, "udp", srcA, "hello.flycast", mdns.TypeAAAA, 0)
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
				t.Errorf("private name with upstream down: %v", r)
			}
		})
	}
}

// TestForwardInFlightBound: with an upstream that never answers and a bound
// of 2, three of five concurrent queries get SERVFAIL at once (they are not
// queued); the two in flight are released by Close.
func TestForwardInFlightBound(t *testing.T) {
	black, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer black.Close()
	ts := startServer(t, Config{
		Upstreams:          []string{black.LocalAddr().String()},
		UpstreamTimeout:    time.Minute, // longer than the test: only the bound can answer
		MaxForwardInFlight: 2,
	})
	results := make(chan *mdns.Msg, 5)
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(mdns.Msg).SetQuestion("example.com.", mdns.TypeA)
			r, err := exchange(ts.udpAddr, "udp", srcA, m)
			if err != nil {
				r = nil // the reply to a held query may be lost at Close
			}
			results <- r
		}()
	}
	for i := 0; i < 3; i++ {
		select {
		case r := <-results:
			if r == nil || r.Rcode != mdns.RcodeServerFailure {
				t.Fatalf("query beyond the bound: %v, want SERVFAIL", r)
			}
		case <-time.After(8 * time.Second): // a bound on the test, not a timing assertion
			t.Fatalf("only %d queries answered; the extra ones must not wait for the upstream", i)
		}
	}
	if n := len(ts.forwards); n != 2 {
		t.Errorf("%d forwards in flight, want 2", n)
	}
	select {
	case r := <-results:
		t.Fatalf("a held forward answered before the upstream or Close: %v", r)
	default:
	}
	ts.Close() // aborts the two held forwards
	wg.Wait()
	close(results)
	for r := range results {
		if r != nil && r.Rcode != mdns.RcodeServerFailure {
			t.Errorf("held forward after Close: %v", r)
		}
	}
}

// TestTruncation: a private TXT answer over 512 bytes to a plain UDP query has
// TC set; over TCP it arrives whole. Forwarded large answers are cut to the
// client's EDNS size, clamped to MaxUDPSize.
func TestTruncation(t *testing.T) {
	up := startUpstream(t)
	ts := startServer(t, Config{Upstreams: []string{up.addr}})

	r := query(t, ts.udpAddr, "udp", srcA, "vms.big.internal", mdns.TypeTXT, 0)
	if !r.Truncated {
		t.Errorf("UDP without EDNS: TC not set (%d answers)", len(r.Answer))
	}
	if r.IsEdns0() != nil {
		t.Error("OPT in a reply to a query without EDNS")
	}
	r = query(t, ts.tcpAddr, "tcp", srcA, "vms.big.internal", mdns.TypeTXT, 0)
	if r.Truncated || len(r.Answer) != 1 || len(rdata(r.Answer)[0]) != 40*19-1 {
		t.Errorf("TCP: truncated %v, answers %d", r.Truncated, len(r.Answer))
	}
	// With EDNS the 759-byte listing fits: no TC, and our OPT says 1232.
	r = query(t, ts.udpAddr, "udp", srcA, "vms.big.internal", mdns.TypeTXT, 4096)
	if r.Truncated || len(r.Answer) != 1 {
		t.Errorf("UDP EDNS 4096: truncated %v, answers %d", r.Truncated, len(r.Answer))
	}
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != MaxUDPSize {
		t.Errorf("reply OPT %v, want UDP size %d", opt, MaxUDPSize)
	}

	// Forwarded: ~4 KB upstream answer; the client asks 4096 but gets at most 1232.
	m := new(mdns.Msg).SetQuestion("large.example.", mdns.TypeTXT)
	m.SetEdns0(4096, false)
	r, err := exchange(ts.udpAddr, "udp", srcA, m)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Error("forwarded 4 KB answer over UDP: TC not set")
	}
	if b, _ := r.Pack(); len(b) > MaxUDPSize {
		t.Errorf("UDP reply of %d bytes, above %d", len(b), MaxUDPSize)
	}
	r = query(t, ts.tcpAddr, "tcp", srcA, "large.example", mdns.TypeTXT, 0)
	if r.Truncated || len(r.Answer) != 1 || strings.Join(r.Answer[0].(*mdns.TXT).Txt, "") != strings.Join(largeTXT, "") {
		t.Errorf("forwarded over TCP: truncated %v, %d answers", r.Truncated, len(r.Answer))
	}
}

// TestRobustness: bad queries get the right rcode and the server keeps going.
func TestRobustness(t *testing.T) {
	ts := startServer(t, Config{})
	send := func(t *testing.T, payload []byte, src netip.Addr) *mdns.Msg {
		t.Helper()
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: src.AsSlice()}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ts.udpAddr)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply: %v", err)
		}
		r := new(mdns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		return r
	}
	pack := func(m *mdns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	two := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	two.Question = append(two.Question, mdns.Question{Name: "web.flycast.", Qtype: mdns.TypeAAAA, Qclass: mdns.ClassINET})
	none := new(mdns.Msg)
	none.Id = 7
	valid := pack(new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA))
	cut := append([]byte(nil), valid[:len(valid)-3]...)
	badvers := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	badvers.SetEdns0(1232, false)
	badvers.IsEdns0().SetVersion(1)
	update := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	update.Opcode = mdns.OpcodeUpdate
	for _, c := range []struct {
		name    string
		payload []byte
		src     netip.Addr
		rcode   int
	}{
		{"two questions", pack(two), srcA, mdns.RcodeFormatError},
		{"no question", pack(none), srcA, mdns.RcodeFormatError},
		{"cut question", cut, srcA, mdns.RcodeFormatError},
		{"EDNS version 1", pack(badvers), srcA, mdns.RcodeBadVers},
		{"update opcode", pack(update), srcA, mdns.RcodeNotImplemented},
		{"no network", valid, srcNoNet, mdns.RcodeRefused},
		{"still serving", valid, srcA, mdns.RcodeSuccess},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := send(t, c.payload, c.src)
			if r.Rcode != c.rcode {
				t.Errorf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[c.rcode])
			}
		})
	}
}

// TestObserve: the metrics hook sees each reply's qtype and rcode.
func TestObserve(t *testing.T) {
	var mu sync.Mutex
	seen := map[[2]int]int{}
	ts := startServer(t, Config{Observe: func(qtype uint16, rcode int) {
		mu.Lock()
		seen[[2]int{int(qtype), rcode}]++
		mu.Unlock()
	}})
	query(t, ts.udpAddr, "udp", srcA, "hello.flycast", mdns.TypeAAAA, 0)
	query(t, ts.tcpAddr, "tcp", srcA, "nope.flycast", mdns.TypeAAAA, 0)
	query(t, ts.udpAddr, "udp", srcNoNet, "hello.flycast", mdns.TypeTXT, 0)
	ts.Close() // waits for handlers, so the hook has run
	mu.Lock()
	defer mu.Unlock()
	for k, want := range map[[2]int]int{
		{int(mdns.TypeAAAA), mdns.RcodeSuccess}:   1,
		{int(mdns.TypeAAAA), mdns.RcodeNameError}: 1,
		{int(mdns.TypeTXT), mdns.RcodeRefused}:    1,
	} {
		if seen[k] != want {
			t.Errorf("observed %v %d times, want %d (all: %v)", k, seen[k], want, seen)
		}
	}
}

// TestLifecycle: Serve returns ErrServerClosed after Close, Close is
// idempotent, Serve after Close refuses at once, and nothing leaks.
func TestLifecycle(t *testing.T) {
	base := runtimeGoroutines()
	up := startUpstream(t)
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	query(t, ts.udpAddr, "udp", srcA, "example.com", mdns.TypeA, 0)
	query(t, ts.tcpAddr, "tcp", srcA, "hello.flycast", mdns.TypeAAAA, 0)
	// An idle TCP connection must not hold Close up.
	idle, err := net.Dial("tcp", ts.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ts.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.ServePacket(pc); !errors.Is(err, ErrServerClosed) {
		t.Errorf("ServePacket after Close: %v", err)
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Error("ServePacket after Close left the PacketConn open")
	}
	idle.Close()
	up.udp.Shutdown()
	up.tcp.Shutdown()
	checkNoLeak(t, base+2) // the upstream's two serve goroutines end in its Cleanup
}

// TestCloseBeforeServe: Close racing with a Serve that has not started yet
// still stops it.
func TestCloseBeforeServe(t *testing.T) {
	for i := 0; i < 20; i++ {
		s := New(Config{Snapshot: fixtureSnapshot, NetworkFor: loopbackNetworkFor})
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.ServePacket(pc) }()
		s.Close()
		select {
		case err := <-done:
			if !errors.Is(err, ErrServerClosed) {
				t.Fatalf("ServePacket: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ServePacket did not return after Close")
		}
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/resolv.conf"
	conf := "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver not-an-ip\noptions ndots:2\nnameserver 2001:db8::53\n"
	if err := writeFile(path, conf); err != nil {
		t.Fatal(err)
	}
	got, err := UpstreamsFromResolvConf(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.1:53", "[fe80::1%eth0]:53", "[2001:db8::53]:53"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v, want %v", got, want)
	}
	if err := writeFile(path, "search x\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := UpstreamsFromResolvConf(path); !errors.Is(err, ErrNoUpstreams) {
		t.Errorf("no nameservers: %v, want ErrNoUpstreams", err)
	}
	if _, err := UpstreamsFromResolvConf(dir + "/missing"); err == nil {
		t.Error("missing file: no error")
	}
}

// TestServeError: a listener that fails makes Serve return a wrapped,
// non-nil error that is not ErrServerClosed.
func TestServeError(t *testing.T) {
	s := New(Config{Snapshot: fixtureSnapshot})
	defer s.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	err = s.Serve(l)
	if err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve on a closed listener: %v", err)
	}
	if len(s.running) != 0 {
		t.Errorf("%d servers still registered after Serve returned", len(s.running))
	}
}
