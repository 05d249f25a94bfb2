package flycast

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/store"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	httpDst = netip.AddrPortFrom(testFlycast, 80)
	rawDst  = netip.AddrPortFrom(testFlycast, 5000)
)

// expectRST reads from c and wants the connection reset (or closed with no
// data), which is what a refused SYN looks like through the test helper.
func expectRST(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes, err %v; want a reset", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("timed out waiting for RST")
	}
	if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
		t.Fatalf("err %v, want ECONNRESET", err)
	}
}

func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

func TestColdRequestWakesMachine(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOpts{app: App{AutoStart: true}, cfg: Config{Registerer: reg}})
	code, body, _ := e.get(e.httpClient(), "/")
	if code != 200 || body != "hello from m1" {
		t.Fatalf("got %d %q", code, body)
	}
	if m := e.st.get("m1"); m.State != store.MachineStarted {
		t.Fatalf("state %s, want started", m.State)
	}
	if n := e.drv.startCount("m1"); n != 1 {
		t.Fatalf("%d starts, want 1", n)
	}
	wants := []string{
		`devgate_wakes_total{app="hello",result="ok"} 1`,
		`devgate_requests_total{app="hello",code="200",machine="m1"} 1`,
		`devgate_wake_seconds_count{app="hello"} 1`,
	}
	// The request counter moves when the handler returns, which may be
	// just after the client read the body.
	var missing []string
	for i := 0; i < 400; i++ {
		got := gather(t, reg)
		missing = missing[:0]
		for _, w := range wants {
			if !got[w] {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Errorf("metrics lack %v", missing)
	}
}

// gather renders the registry's samples as "name{labels} value" lines.
func gather(t *testing.T, reg *prometheus.Registry) map[string]bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			switch {
			case m.GetCounter() != nil:
				out[fmt.Sprintf("%s{%s} %g", name, strings.Join(labels, ","), m.GetCounter().GetValue())] = true
			case m.GetHistogram() != nil:
				out[fmt.Sprintf("%s_count{%s} %d", name, strings.Join(labels, ","), m.GetHistogram().GetSampleCount())] = true
			}
		}
	}
	return out
}

func TestWarmRequestsOnlyToStartedMachines(t *testing.T) {
	e := newEnv(t, envOpts{ids: []string{"m1", "m2"}, started: []string{"m2"}, app: App{AutoStart: true}})
	c := e.httpClient()
	for i := 0; i < 10; i++ {
		code, body, _ := e.get(c, "/")
		if code != 200 || body != "hello from m2" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if n := e.drv.startCount("m1"); n != 0 {
		t.Fatalf("stopped machine m1 started %d times", n)
	}
}

func TestLeastLoadedSharesConnections(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", ids: []string{"m1", "m2"}, started: []string{"m1", "m2"}})
	var conns []net.Conn
	for i := 0; i < 10; i++ {
		c, err := e.dial(rawDst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "ping")
		conns = append(conns, c)
	}
	if a, b := e.drv.servedBy("m1"), e.drv.servedBy("m2"); a != 5 || b != 5 {
		t.Fatalf("held connections split %d/%d, want 5/5", a, b)
	}
}

func TestRegionPreferredAndSoftLimit(t *testing.T) {
	svc := rawService()
	svc[0].Concurrency.Soft = 2
	e := newEnv(t, envOpts{kind: "echo", ids: []string{"m1", "m2"}, started: []string{"m1", "m2"},
		regionOf: map[string]string{"m1": "ams"}, app: App{Services: svc}})
	for i := 0; i < 3; i++ {
		c, err := e.dial(rawDst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "x")
	}
	// Two fit under m2's soft limit in our region; the third goes to the
	// other region's machine, still under its soft limit.
	if a, b := e.drv.servedBy("m1"), e.drv.servedBy("m2"); a != 1 || b != 2 {
		t.Fatalf("split ams=%d ord=%d, want 1/2", a, b)
	}
}

func TestHardLimitQueuesThen503(t *testing.T) {
	svc := httpService()
	svc[0].Concurrency.Hard = 1
	e := newEnv(t, envOpts{started: []string{"m1"}, app: App{Services: svc},
		cfg: Config{QueueTimeout: 200 * time.Millisecond}})
	held := make(chan int, 1)
	go func() {
		resp, err := e.httpClient().Get("http://hello.flycast/hold")
		if err != nil {
			held <- -1
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	select {
	case <-e.drv.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("first request never reached the machine")
	}
	code, body, _ := e.get(e.httpClient(), "/")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "hard_limit") {
		t.Fatalf("over hard limit: %d %q", code, body)
	}
	// Raw waiters get the same treatment as a RST; a queued request is
	// served as soon as the slot frees.
	done := make(chan string, 1)
	go func() {
		_, b, _ := e.get(e.httpClient(), "/")
		done <- b
	}()
	waitQueued(t, e, 1)
	close(e.drv.hold)
	if c := <-held; c != 200 {
		t.Fatalf("held request: %d", c)
	}
	select {
	case b := <-done:
		if b != "hello from m1" {
			t.Fatalf("queued request got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("queued request not served")
	}
}

func waitQueued(t *testing.T, e *env, n int) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		e.p.mu.Lock()
		q := 0
		if as := e.p.appStates["hello"]; as != nil {
			q = len(as.queue)
		}
		e.p.mu.Unlock()
		if q >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("queue never reached %d", n)
}

func TestAutoStartOff(t *testing.T) {
	e := newEnv(t, envOpts{app: App{AutoStart: false}})
	code, body, _ := e.get(e.httpClient(), "/")
	want := "app hello has no started machines and auto_start_machines is off"
	if code != 503 || !strings.Contains(body, want) {
		t.Fatalf("got %d %q", code, body)
	}

	r := newEnv(t, envOpts{kind: "echo", app: App{AutoStart: false}})
	c, err := r.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectRST(t, c)
	if n := e.drv.startCount("m1") + r.drv.startCount("m1"); n != 0 {
		t.Fatalf("%d starts with auto_start off", n)
	}
}

func TestFailedStartThenHealthyMachine(t *testing.T) {
	e := newEnv(t, envOpts{ids: []string{"m1", "m2"}, app: App{AutoStart: true}})
	e.drv.failStart["m1"] = true
	c := e.httpClient()
	code, body, _ := e.get(c, "/")
	if code != 503 || !strings.Contains(body, "app hello") || !strings.Contains(body, "no such file") {
		t.Fatalf("failed wake: %d %q", code, body)
	}
	m := e.st.get("m1")
	if m.State != store.MachineFailed || !strings.Contains(m.Reason, "no such file") {
		t.Fatalf("m1 %s %q, want failed with reason", m.State, m.Reason)
	}
	code, body, _ = e.get(c, "/")
	if code != 200 || body != "hello from m2" {
		t.Fatalf("next request: %d %q", code, body)
	}
}

func TestIdleMachineStoppedAndWokenAgain(t *testing.T) {
	e := newEnv(t, envOpts{app: App{AutoStart: true, AutoStop: "stop", IdleTimeout: 150 * time.Millisecond}})
	c := e.httpClient()
	if code, _, _ := e.get(c, "/"); code != 200 {
		t.Fatalf("first: %d", code)
	}
	c.Transport.(*http.Transport).CloseIdleConnections()
	m := e.waitState("m1", store.MachineStopped)
	if !strings.Contains(m.Reason, "idle") {
		t.Fatalf("reason %q", m.Reason)
	}
	if code, body, _ := e.get(c, "/"); code != 200 || body != "hello from m1" {
		t.Fatalf("after stop: %d %q", code, body)
	}
	if n := e.drv.startCount("m1"); n != 2 {
		t.Fatalf("%d starts, want 2", n)
	}
}

func TestLongConnectionKeepsMachineAwake(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", noStart: true,
		app: App{AutoStart: true, AutoStop: "stop", IdleTimeout: time.Millisecond}})
	if err := e.p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "hi")
	time.Sleep(20 * time.Millisecond) // well past the idle period
	if ids := e.p.autoStopPass(); len(ids) != 0 {
		t.Fatalf("stopped %v while a connection was open", ids)
	}
	echoOnce(t, c, "still here")
}

func TestMinMachinesRunningAndOnePerPass(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", ids: []string{"m1", "m2", "m3", "m4"}, noStart: true,
		started: []string{"m1", "m2", "m3", "m4"},
		app:     App{AutoStop: "stop", MinRunning: 1, IdleTimeout: time.Millisecond}})
	time.Sleep(10 * time.Millisecond) // let the idle period pass
	var stopped []string
	for pass := 0; pass < 5; pass++ {
		ids := e.p.autoStopPass()
		if len(ids) > 1 {
			t.Fatalf("pass %d stopped %v, want at most one", pass, ids)
		}
		stopped = append(stopped, ids...)
	}
	if len(stopped) != 3 {
		t.Fatalf("stopped %v, want 3 (min_machines_running = 1 of 4)", stopped)
	}
	running := 0
	for _, m := range e.st.list() {
		if m.State == store.MachineStarted {
			running++
		}
	}
	if running != 1 {
		t.Fatalf("%d started, want 1", running)
	}
}

func TestAutoStopOffKeepsMachines(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", noStart: true, started: []string{"m1"},
		app: App{AutoStop: "off", IdleTimeout: time.Millisecond}})
	time.Sleep(5 * time.Millisecond)
	if ids := e.p.autoStopPass(); len(ids) != 0 {
		t.Fatalf("auto_stop off stopped %v", ids)
	}
}

func TestBackendKilledMidStream(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", started: []string{"m1"}})
	c, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "before")
	if !e.drv.kill("m1") {
		t.Fatal("m1 was not running")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 16))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("client conn not closed after backend died: %v", err)
	}
	m := e.waitState("m1", store.MachineFailed)
	if m.ExitCode != 137 {
		t.Fatalf("exit code %d", m.ExitCode)
	}
}

func TestConcurrentColdRequestsShareOneWake(t *testing.T) {
	e := newEnv(t, envOpts{app: App{AutoStart: true}})
	e.drv.listenDelay = 50 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.httpClient().Get("http://hello.flycast/")
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "hello from m1" {
				errs <- fmt.Errorf("%d %q", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.drv.startCount("m1"); n != 1 {
		t.Fatalf("%d starts for 20 concurrent cold requests, want 1", n)
	}
}

func TestRawColdConnectWakes(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", app: App{AutoStart: true}})
	e.drv.listenDelay = 20 * time.Millisecond
	c, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "cold")
}

func TestFlyHeaders(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c := e.httpClient()
	hdrs := func() map[string]string {
		req, _ := http.NewRequest("GET", "http://hello.flycast/headers", nil)
		req.Header.Set("Fly-Region", "spoofed")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]string{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ": ")
			out[k] = v
		}
		return out
	}
	h := hdrs()
	want := map[string]string{
		"Fly-Forwarded-Port": "80",
		"Fly-Region":         "ord",
		"X-Forwarded-For":    testPeer.String(),
		"X-Forwarded-Proto":  "http",
		"Via":                "1.1 devgate",
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("%s = %q, want %q", k, h[k], v)
		}
	}
	id1, id2 := h["Fly-Request-Id"], hdrs()["Fly-Request-Id"]
	if id1 == "" || id1 == id2 {
		t.Errorf("Fly-Request-Id %q then %q, want unique", id1, id2)
	}
	// Encodings pass through: a client that asks for none must not have
	// the proxy ask the machine for gzip on its behalf.
	c.Transport.(*http.Transport).DisableCompression = true
	if ae, ok := hdrs()["Accept-Encoding"]; ok {
		t.Errorf("machine got Accept-Encoding %q from a client that sent none", ae)
	}
}

func TestForceHTTPS(t *testing.T) {
	svc := httpService()
	svc[0].Ports[0].ForceHTTPS = true
	e := newEnv(t, envOpts{app: App{Services: svc, AutoStart: true}})
	code, _, h := e.get(e.httpClient(), "/a/b?q=1")
	if code != 301 || h.Get("Location") != "https://hello.flycast/a/b?q=1" {
		t.Fatalf("got %d Location %q", code, h.Get("Location"))
	}
	if n := e.drv.startCount("m1"); n != 0 {
		t.Fatalf("a redirect woke the machine %d times", n)
	}
}

func TestLargeHeaderRejected(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	req, _ := http.NewRequest("GET", "http://hello.flycast/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", httpMaxHeaderBytes+8192))
	resp, err := e.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("got %d, want 431", resp.StatusCode)
	}
}

func TestProxyProtocol(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			svc := []Service{{InternalPort: 5000, ProxyProto: v,
				Ports: []Port{{Start: 5000, Handlers: []string{"proxy_proto"}}}}}
			e := newEnv(t, envOpts{kind: "pp", started: []string{"m1"}, app: App{Services: svc}})
			c, err := e.dial(rawDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			port := c.LocalAddr().(*net.TCPAddr).Port
			want := fmt.Sprintf("[%s]:%d %s\n", testPeer, port, rawDst)
			if line != want {
				t.Fatalf("backend saw %q, want %q", line, want)
			}
		})
	}
}

func TestDirect6PNOnlyToStarted(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", ids: []string{"m1", "m2"}, started: []string{"m1"}})
	src := netip.AddrPortFrom(testPeer, 40000)
	if h := e.p.RouteTCP(src, netip.AddrPortFrom(machineAddr(1), 5000)); h != nil {
		t.Fatal("route to stopped machine m2")
	}
	if h := e.p.RouteTCP(src, netip.AddrPortFrom(testFlycast, 81)); h != nil {
		t.Fatal("route to a Flycast port no service covers")
	}
	if !e.p.Exists(machineAddr(1)) || !e.p.Exists(testFlycast) || e.p.Exists(netip.MustParseAddr("fdaa:0:1::99")) {
		t.Fatal("Exists disagrees with the snapshot")
	}
	c, err := e.dial(netip.AddrPortFrom(machineAddr(0), 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "direct")
	c2, err := e.dial(netip.AddrPortFrom(machineAddr(1), 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	expectRST(t, c2)
	if n := e.drv.startCount("m2"); n != 0 {
		t.Fatalf("direct route woke m2 %d times", n)
	}
}

func TestStartStopMachineAndUpdateKeepsState(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo"})
	ctx := context.Background()
	if err := e.p.StartMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if err := e.p.StartMachine(ctx, "nope"); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("unknown machine: %v", err)
	}
	c, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "x")
	e.push() // an unrelated change must keep the open connection counted
	e.p.mu.Lock()
	load := e.p.machines["m1"].load
	e.p.mu.Unlock()
	if load != 1 {
		t.Fatalf("load %d after Update, want 1", load)
	}
	if err := e.p.StopMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if m := e.st.get("m1"); m.State != store.MachineStopped {
		t.Fatalf("state %s", m.State)
	}
	if err := e.p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

func TestHardLimitRawTCPGetsRST(t *testing.T) {
	svc := rawService()
	svc[0].Concurrency.Hard = 1
	e := newEnv(t, envOpts{kind: "echo", started: []string{"m1"}, app: App{Services: svc},
		cfg: Config{QueueTimeout: 100 * time.Millisecond}})
	c1, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	echoOnce(t, c1, "first")
	c2, err := e.dial(rawDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	expectRST(t, c2)
	echoOnce(t, c1, "first still served")
}

func TestSoftLimitWakesAnotherMachine(t *testing.T) {
	svc := rawService()
	svc[0].Concurrency.Soft = 1
	svc[0].Concurrency.Hard = 5
	e := newEnv(t, envOpts{kind: "echo", ids: []string{"m1", "m2"}, started: []string{"m1"},
		app: App{Services: svc, AutoStart: true}})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(msg string) {
		c, err := e.dial(rawDst)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		echoOnce(t, c, msg)
	}
	dial("a") // m1 at its soft limit now
	dial("b") // served by m1 over soft, and m2 wakes
	if got := e.drv.servedBy("m1"); got != 2 {
		t.Fatalf("m1 served %d, want 2 while m2 wakes", got)
	}
	e.waitState("m2", store.MachineStarted)
	dial("c")
	if got := e.drv.servedBy("m2"); got != 1 {
		t.Fatalf("m2 served %d after waking, want 1", got)
	}
}

func TestStaleStoppedExitIgnored(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", noStart: true, started: []string{"m1"}})
	ctx := context.Background()
	if err := e.p.StopMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if err := e.p.StartMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	// The Exit of the first run arrives only now.
	e.p.handleExit(machines.Exit{ID: "m1", Stopped: true})
	if m := e.st.get("m1"); m.State != store.MachineStarted {
		t.Fatalf("stale exit made m1 %s", m.State)
	}
	// A real crash is applied.
	e.drv.kill("m1")
	e.p.handleExit(machines.Exit{ID: "m1", ExitCode: 1, Err: errors.New("boom")})
	if m := e.st.get("m1"); m.State != store.MachineFailed || m.ExitCode != 1 || !strings.Contains(m.Reason, "boom") {
		t.Fatalf("after crash: %+v", m)
	}
}

func TestWakeErrorWrapsSentinel(t *testing.T) {
	e := newEnv(t, envOpts{kind: "echo", app: App{AutoStart: true}})
	e.drv.failStart["m1"] = true
	err := e.p.StartMachine(context.Background(), "m1")
	if !errors.Is(err, ErrWakeFailed) || !strings.Contains(err.Error(), "machine m1 failed to start") {
		t.Fatalf("err %v", err)
	}
}

func TestRecordedStartedButNotRunningIsWoken(t *testing.T) {
	e := newEnv(t, envOpts{recorded: []string{"m1"}, app: App{AutoStart: true}})
	code, body, _ := e.get(e.httpClient(), "/")
	if code != 200 || body != "hello from m1" {
		t.Fatalf("got %d %q", code, body)
	}
	if n := e.drv.startCount("m1"); n != 1 {
		t.Fatalf("%d starts, want 1", n)
	}
}

func TestInterruptedStartingMachineIsWoken(t *testing.T) {
	e := newEnv(t, envOpts{app: App{AutoStart: true}})
	if _, err := e.st.UpdateMachine(context.Background(), "m1", func(m *store.Machine) error {
		m.State = store.MachineStarting // left so by a gateway restart
		m.UpdatedAt = time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := e.get(e.httpClient(), "/"); code != 200 || body != "hello from m1" {
		t.Fatalf("got %d %q", code, body)
	}
}
