package flycast

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/store"
)

// --- a test driver whose machines are real servers on 127.0.0.1 ---

type tMachine struct {
	ln    net.Listener
	srv   *http.Server
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (m *tMachine) close() {
	m.ln.Close()
	if m.srv != nil {
		m.srv.Close()
	}
	m.mu.Lock()
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

type testDriver struct {
	kind        string // http, echo, pp, sink
	listenDelay time.Duration

	mu        sync.Mutex
	running   map[string]*tMachine
	starts    map[string]int
	served    map[string]int
	failStart map[string]bool
	exits     chan machines.Exit
	hold      chan struct{}
	holding   chan struct{}
	sunk      chan int64
	closed    bool
}

func newTestDriver(kind string) *testDriver {
	return &testDriver{
		kind: kind, running: map[string]*tMachine{}, starts: map[string]int{},
		served: map[string]int{}, failStart: map[string]bool{},
		exits: make(chan machines.Exit, 1024), hold: make(chan struct{}),
		holding: make(chan struct{}, 64), sunk: make(chan int64, 16),
	}
}

func (d *testDriver) Name() string { return "process" }

func (d *testDriver) Start(ctx context.Context, spec machines.Spec) error {
	d.mu.Lock()
	d.starts[spec.ID]++
	fail := d.failStart[spec.ID]
	running := d.running[spec.ID] != nil
	d.mu.Unlock()
	if running {
		return fmt.Errorf("machine %s is already running", spec.ID)
	}
	if fail {
		return errors.New("exec: \"./server\": no such file or directory")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	m := &tMachine{ln: ln, conns: map[net.Conn]struct{}{}}
	if d.listenDelay > 0 {
		// Reserve an address, then listen on it late, like a process that
		// takes a moment to boot.
		addr := ln.Addr().String()
		ln.Close()
		m.ln = &lateListener{addr: addr, ready: make(chan struct{}), done: make(chan struct{})}
		go m.ln.(*lateListener).open(d.listenDelay)
	}
	d.mu.Lock()
	d.running[spec.ID] = m
	d.mu.Unlock()
	id := spec.ID
	if d.kind == "http" {
		m.srv = &http.Server{Handler: d.httpHandler(id)}
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.srv.Serve(m.ln) }()
		return nil
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := m.ln.Accept()
			if err != nil {
				return
			}
			m.mu.Lock()
			m.conns[c] = struct{}{}
			m.mu.Unlock()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer c.Close()
				d.serveRaw(id, c)
			}()
		}
	}()
	return nil
}

// serveRaw serves one conn. Readiness probes connect and send nothing, so
// only conns that send a byte count as served.
func (d *testDriver) serveRaw(id string, c net.Conn) {
	switch d.kind {
	case "echo":
		buf := make([]byte, 32<<10)
		n, err := c.Read(buf)
		if n == 0 || err != nil {
			return
		}
		d.mu.Lock()
		d.served[id]++
		d.mu.Unlock()
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
		io.Copy(c, c)
	case "sink":
		n, _ := io.Copy(io.Discard, c)
		if n > 0 { // not a readiness probe
			d.sunk <- n
		}
	case "pp":
		br := bufio.NewReader(c)
		src, dst, err := parseProxyHeader(br)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		fmt.Fprintf(c, "%s %s\n", src, dst)
	}
}

func (d *testDriver) httpHandler(id string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.served[id]++
		d.mu.Unlock()
		w.Header().Set("X-Machine", id)
		switch r.URL.Path {
		case "/hold":
			d.holding <- struct{}{}
			select {
			case <-d.hold:
			case <-r.Context().Done():
			}
		case "/headers":
			var lines []string
			for k, vs := range r.Header {
				lines = append(lines, k+": "+strings.Join(vs, ","))
			}
			sort.Strings(lines)
			fmt.Fprintln(w, strings.Join(lines, "\n"))
			return
		default:
			if testEndpoint(w, r) {
				return
			}
		}
		fmt.Fprintf(w, "hello from %s", id)
	})
}

func (d *testDriver) stopOne(id string, e machines.Exit) bool {
	d.mu.Lock()
	m := d.running[id]
	delete(d.running, id)
	d.mu.Unlock()
	if m == nil {
		return false
	}
	m.close()
	select {
	case d.exits <- e:
	default:
	}
	return true
}

func (d *testDriver) Stop(ctx context.Context, id string) error {
	d.stopOne(id, machines.Exit{ID: id, ExitCode: 0, Stopped: true})
	return nil
}

// kill ends a machine as a crash would.
func (d *testDriver) kill(id string) bool {
	return d.stopOne(id, machines.Exit{ID: id, ExitCode: 137, Err: errors.New("killed")})
}

func (d *testDriver) Destroy(ctx context.Context, id string) error { return d.Stop(ctx, id) }

func (d *testDriver) Backend(id string, port int) (netip.AddrPort, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.running[id]
	if m == nil {
		return netip.AddrPort{}, machines.ErrNotRunning
	}
	return netip.ParseAddrPort(m.ln.Addr().String())
}

func (d *testDriver) Exits() <-chan machines.Exit { return d.exits }

func (d *testDriver) Close() error {
	d.mu.Lock()
	ids := make([]string, 0, len(d.running))
	for id := range d.running {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids {
		d.stopOne(id, machines.Exit{ID: id, Stopped: true})
	}
	return nil
}

func (d *testDriver) startCount(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.starts[id]
}

func (d *testDriver) servedBy(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.served[id]
}

// lateListener listens on addr only after a delay.
type lateListener struct {
	addr  string
	ready chan struct{}
	done  chan struct{}
	once  sync.Once
	ln    net.Listener
}

func (l *lateListener) open(delay time.Duration) {
	select {
	case <-time.After(delay):
	case <-l.done:
		return
	}
	ln, err := net.Listen("tcp", l.addr)
	if err == nil {
		l.ln = ln
		close(l.ready)
	}
}

func (l *lateListener) Accept() (net.Conn, error) {
	select {
	case <-l.ready:
		return l.ln.Accept()
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *lateListener) Close() error {
	l.once.Do(func() { close(l.done) })
	select {
	case <-l.ready:
		return l.ln.Close()
	default:
	}
	return nil
}

func (l *lateListener) Addr() net.Addr {
	ap := netip.MustParseAddrPort(l.addr)
	return net.TCPAddrFromAddrPort(ap)
}

// --- a tiny in-memory MachineStore ---

type memStore struct {
	mu       sync.Mutex
	m        map[string]store.Machine
	onChange func()
}

func (s *memStore) UpdateMachine(ctx context.Context, id string, fn func(*store.Machine) error) (store.Machine, error) {
	s.mu.Lock()
	m, ok := s.m[id]
	if !ok {
		s.mu.Unlock()
		return store.Machine{}, fmt.Errorf("machine %s not found", id)
	}
	if err := fn(&m); err != nil {
		s.mu.Unlock()
		return store.Machine{}, err
	}
	s.m[id] = m
	cb := s.onChange
	s.mu.Unlock()
	if cb != nil {
		cb()
	}
	return m, nil
}

func (s *memStore) get(id string) store.Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *memStore) list() []store.Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]store.Machine, 0, len(s.m))
	for _, m := range s.m {
		out = append(out, m)
	}
	return out
}

// --- the environment: proxy, driver, store, one app "hello" ---

var (
	testPrefix  = netip.MustParsePrefix("fdaa:0:1::/48")
	testFlycast = netip.MustParseAddr("fdaa:0:1:0:1::1")
	testPeer    = netip.MustParseAddr("fdaa:0:1:a7b:1:0:a:2")
)

func machineAddr(i int) netip.Addr {
	return netip.MustParseAddr("fdaa:0:1:a7b:100::" + strconv.Itoa(i+10))
}

type env struct {
	t    testing.TB
	p    *Proxy
	drv  *testDriver
	st   *memStore
	app  *App
	logs *testLog
	wg   sync.WaitGroup
}

type envOpts struct {
	kind     string   // driver kind; "http" by default
	ids      []string // machines, all stopped at first
	app      App      // Name, Org, Network and Services get defaults
	cfg      Config   // Region "ord" by default
	noStart  bool     // do not run Proxy.Start
	started  []string // machines to start before the test
	regionOf map[string]string
	// recorded are machines the store calls started although the driver
	// does not run them, as after a gateway restart.
	recorded []string
}

type testLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *testLog) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func httpService() []Service {
	return []Service{{InternalPort: 8080, Ports: []Port{{Start: 80, Handlers: []string{"http"}}},
		Concurrency: Concurrency{Type: "requests"}}}
}

func rawService() []Service {
	return []Service{{InternalPort: 5000, Ports: []Port{{Start: 5000}}, Concurrency: Concurrency{Type: "connections"}}}
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	goroutines := len(ourGoroutines())
	if o.kind == "" {
		o.kind = "http"
	}
	if len(o.ids) == 0 {
		o.ids = []string{"m1"}
	}
	e := &env{t: t, drv: newTestDriver(o.kind), st: &memStore{m: map[string]store.Machine{}}, logs: &testLog{}}
	a := o.app
	a.Name, a.Org, a.Network = "hello", store.DefaultOrg, store.DefaultNetwork
	if a.Services == nil {
		if o.kind == "http" {
			a.Services = httpService()
		} else {
			a.Services = rawService()
		}
	}
	e.app = &a
	for i, id := range o.ids {
		region := "ord"
		if r, ok := o.regionOf[id]; ok {
			region = r
		}
		e.st.m[id] = store.Machine{ID: id, App: "hello", Region: region, State: store.MachineStopped,
			Driver: "process", Address: machineAddr(i)}
	}
	for _, id := range o.recorded {
		m := e.st.m[id]
		m.State = store.MachineStarted
		e.st.m[id] = m
	}
	cfg := o.cfg
	if cfg.Region == "" {
		cfg.Region = "ord"
	}
	cfg.Drivers = map[string]machines.Driver{"process": e.drv}
	cfg.Store = e.st
	cfg.Logf = e.logs.logf
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	e.st.onChange = e.push
	e.push()
	if !o.noStart {
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range o.started {
		if err := p.StartMachine(context.Background(), id); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	t.Cleanup(func() {
		p.Close()
		e.wg.Wait()
		e.drv.Close()
		// Every goroutine the proxy, the driver and the helpers started
		// must be gone.
		deadline := time.Now().Add(5 * time.Second)
		for len(ourGoroutines()) > goroutines && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if g := ourGoroutines(); len(g) > goroutines {
			t.Errorf("goroutines leaked: %d > %d\n%s", len(g), goroutines, strings.Join(g, "\n\n"))
		}
	})
	return e
}

// ourGoroutines lists the stacks of goroutines that run this package's or
// net/http's code, other than the caller: the ones a leak would leave.
// Runtime and testing framework goroutines (os/signal, fuzz workers) are
// not ours to check.
func ourGoroutines() []string {
	buf := make([]byte, 4<<20)
	all := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	var out []string
	for _, g := range all[1:] { // all[0] is the caller
		if strings.Contains(g, "devgate/flycast.") || strings.Contains(g, "net/http.") {
			out = append(out, g)
		}
	}
	return out
}

func (e *env) push() {
	snap := store.NewSnapshot(
		[]store.Org{{Name: store.DefaultOrg}},
		[]store.Network{{Org: store.DefaultOrg, Name: store.DefaultNetwork, Prefix: testPrefix}},
		nil,
		[]store.App{{Name: "hello", Org: store.DefaultOrg, Network: store.DefaultNetwork}},
		[]store.IP{{Address: testFlycast, App: "hello", Type: store.IPPrivate, Org: store.DefaultOrg, Network: store.DefaultNetwork}},
		e.st.list())
	e.p.Update(snap, map[string]*App{"hello": e.app})
}

// testRequest is a netstack.TCPRequest over a real loopback connection
// whose handshake already completed; Refuse answers with a RST.
type testRequest struct {
	c        *net.TCPConn
	src, dst netip.AddrPort
	accepted chan struct{}
}

func (r *testRequest) Src() netip.AddrPort { return r.src }
func (r *testRequest) Dst() netip.AddrPort { return r.dst }
func (r *testRequest) Accept() (net.Conn, error) {
	close(r.accepted)
	return r.c, nil
}
func (r *testRequest) Refuse() {
	r.c.SetLinger(0)
	r.c.Close()
}

// dial connects to dst through the proxy's router, as the netstack would.
func (e *env) dial(dst netip.AddrPort) (net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		return nil, err
	}
	port := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	req := &testRequest{c: s.(*net.TCPConn), src: netip.AddrPortFrom(testPeer, port), dst: dst, accepted: make(chan struct{})}
	h := e.p.RouteTCP(req.src, dst)
	if h == nil {
		req.Refuse()
		return c, nil
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		h.ServeTCP(req)
	}()
	return c, nil
}

func (e *env) httpClient() *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return e.dial(httpDst)
	}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) get(c *http.Client, path string) (int, string, http.Header) {
	e.t.Helper()
	resp, err := c.Get("http://hello.flycast" + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET %s body: %v", path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// waitState polls the store until machine id is in state want.
func (e *env) waitState(id string, want store.MachineState) store.Machine {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := e.st.get(id)
		if m.State == want {
			return m
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("machine %s: state %s, want %s", id, m.State, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- PROXY protocol parser for the backend side of the tests ---

func parseProxyHeader(br *bufio.Reader) (src, dst netip.AddrPort, err error) {
	sig, err := br.Peek(12)
	if err != nil {
		return src, dst, err
	}
	if string(sig) == proxyV2Sig {
		br.Discard(12)
		var h [4]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return src, dst, err
		}
		if h[0] != 0x21 {
			return src, dst, fmt.Errorf("bad v2 version/command %#x", h[0])
		}
		n := int(binary.BigEndian.Uint16(h[2:]))
		if n > 512 {
			return src, dst, fmt.Errorf("v2 length %d", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return src, dst, err
		}
		alen := 0
		switch h[1] {
		case 0x11:
			alen = 4
		case 0x21:
			alen = 16
		default:
			return src, dst, fmt.Errorf("bad v2 family %#x", h[1])
		}
		if n < 2*alen+4 {
			return src, dst, fmt.Errorf("v2 body too short")
		}
		sa, _ := netip.AddrFromSlice(body[:alen])
		da, _ := netip.AddrFromSlice(body[alen : 2*alen])
		sp := binary.BigEndian.Uint16(body[2*alen:])
		dp := binary.BigEndian.Uint16(body[2*alen+2:])
		return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp), nil
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return src, dst, err
	}
	f := strings.Fields(strings.TrimSuffix(line, "\r\n"))
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") {
		return src, dst, fmt.Errorf("bad v1 header %q", line)
	}
	sa, err1 := netip.ParseAddr(f[2])
	da, err2 := netip.ParseAddr(f[3])
	sp, err3 := strconv.ParseUint(f[4], 10, 16)
	dp, err4 := strconv.ParseUint(f[5], 10, 16)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return src, dst, err
	}
	return netip.AddrPortFrom(sa, uint16(sp)), netip.AddrPortFrom(da, uint16(dp)), nil
}

var _ netstack.TCPRequest = (*testRequest)(nil)
