package flycast

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rawConn dials the http handler through the proxy's router.
func (e *env) rawConn() (net.Conn, *bufio.Reader) {
	e.t.Helper()
	c, err := e.dial(httpDst)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// TestFastPathMessages sends each message shape over one keep-alive
// connection, so every answer must also leave the connection in step.
func TestFastPathMessages(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	for _, tc := range []struct {
		name, req, method string
		code              int
		body              string
		check             func(*http.Response) string
	}{
		{name: "GET", req: "GET / HTTP/1.1\r\nHost: hello.flycast\r\n\r\n", code: 200, body: "hello from m1"},
		{name: "POST with a length", req: "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
			code: 200, body: "POST cl=5 te=[] hello"},
		{name: "POST chunked", req: "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
			code: 200, body: "POST cl=-1 te=[chunked] hello"},
		{name: "POST empty", req: "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
			code: 200, body: "POST cl=0 te=[] "},
		{name: "HEAD", req: "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", method: "HEAD", code: 200,
			check: func(r *http.Response) string {
				if r.ContentLength != int64(len("hello from m1")) {
					return "HEAD lost the length of the GET"
				}
				return ""
			}},
		{name: "204", req: "GET /empty HTTP/1.1\r\nHost: h\r\n\r\n", code: 204},
		{name: "chunked answer", req: "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n", code: 200, body: "part0;part1;part2;",
			check: func(r *http.Response) string {
				if len(r.TransferEncoding) == 0 {
					return "a streamed answer lost its chunking"
				}
				return ""
			}},
		{name: "trailer", req: "GET /trailer HTTP/1.1\r\nHost: h\r\n\r\n", code: 200, body: "body",
			check: func(r *http.Response) string {
				if r.Trailer.Get("X-Sum") != "42" {
					return "trailer X-Sum = " + r.Trailer.Get("X-Sum")
				}
				return ""
			}},
		{name: "103 then 200", req: "GET /early HTTP/1.1\r\nHost: h\r\n\r\n", code: 103},
		{name: "the 200 after the 103", code: 200, body: "after hints"},
		{name: "hop-by-hop fields", req: "GET /hop HTTP/1.1\r\nHost: h\r\n\r\n", code: 200, body: "hop",
			check: func(r *http.Response) string {
				for _, k := range []string{"Connection", "X-Hop", "Keep-Alive"} {
					if v := r.Header.Get(k); v != "" {
						return k + " reached the client: " + v
					}
				}
				return ""
			}},
		{name: "no framing: re-chunked", req: "GET /unframed HTTP/1.1\r\nHost: h\r\n\r\n", code: 200, body: "until close"},
	} {
		if tc.req != "" {
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatalf("%s: write: %v", tc.name, err)
			}
		}
		method := tc.method
		if method == "" {
			method = "GET"
		}
		resps, bodies, err := readResponses(br, method, 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resps[0].StatusCode != tc.code || bodies[0] != tc.body {
			t.Errorf("%s: %s %q, want %d %q", tc.name, resps[0].Status, bodies[0], tc.code, tc.body)
		}
		if resps[0].Close {
			t.Errorf("%s: the proxy closes the client connection", tc.name)
		}
		if tc.check != nil {
			if msg := tc.check(resps[0]); msg != "" {
				t.Errorf("%s: %s", tc.name, msg)
			}
		}
	}
	if n := testutil.ToFloat64(e.p.met.handOffs); n != 0 {
		t.Errorf("%v connections handed to net/http; want all on the fast path", n)
	}
}

// TestFastPathPipelining: requests sent back to back are answered in order.
func TestFastPathPipelining(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"+
		"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /echo?x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	resps, bodies, err := readResponses(br, "GET", 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"hello from m1", "POST cl=3 te=[] abc", "GET cl=0 te=[] "}
	for i := range want {
		if bodies[i] != want[i] {
			t.Errorf("answer %d: %q, want %q", i, bodies[i], want[i])
		}
	}
	if !resps[2].Close {
		t.Error("Connection: close was not answered in kind")
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after Connection: close: read %d, %v; want the connection closed", n, err)
	}
}

// TestFastPathStaleBackendConn: a machine that closes a keep-alive
// connection after answering; the next requests, with and without a body,
// are served on a new one.
func TestFastPathStaleBackendConn(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	for i, req := range []string{
		"GET /stale HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /stale HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok",
	} {
		// The machine's close must have arrived before the next request,
		// as it does between a client's requests.
		time.Sleep(20 * time.Millisecond)
		io.WriteString(c, req)
		resps, bodies, err := readResponses(br, "GET", 1)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resps[0].StatusCode != 200 {
			t.Errorf("request %d: %s %q", i, resps[0].Status, bodies[0])
		}
	}
}

// TestFastPathHandOff: what the fast path leaves to net/http is still
// served, on the same connection as the requests before it.
func TestFastPathHandOff(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	t.Run("Upgrade", func(t *testing.T) {
		c, br := e.rawConn()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
		if _, _, err := readResponses(br, "GET", 1); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /upgrade HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %s", resp.Status)
		}
		io.WriteString(c, "ping\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "echo: PING\n" {
			t.Errorf("after the upgrade: %q, %v", line, err)
		}
	})
	for _, tc := range []struct{ name, req, body string }{
		{"HTTP/1.0", "GET /echo HTTP/1.0\r\nHost: h\r\n\r\n", "GET cl=0 te=[] "},
		{"Expect: 100-continue", "POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", "POST cl=2 te=[] hi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := e.rawConn()
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"+tc.req)
			if _, _, err := readResponses(br, "GET", 1); err != nil {
				t.Fatal(err)
			}
			for range 3 { // 100 Continue may come first
				resps, bodies, err := readResponses(br, "GET", 1)
				if err != nil {
					t.Fatal(err)
				}
				if resps[0].StatusCode == http.StatusContinue {
					continue
				}
				if bodies[0] != tc.body {
					t.Errorf("%s %q, want %q", resps[0].Status, bodies[0], tc.body)
				}
				return
			}
			t.Error("no final answer after three 100 Continue")
		})
	}
	if n := testutil.ToFloat64(e.p.met.handOffs); n != 3 {
		t.Errorf("%v connections handed to net/http, want 3", n)
	}
}

// TestFastPathForwardedHeaders: the machine gets Fly's fields, never the
// client's copies, and no hop-by-hop field the client named.
func TestFastPathForwardedHeaders(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	io.WriteString(c, "GET /headers HTTP/1.1\r\nHost: h\r\nFly-Region: evil\r\nFly-Request-Id: forged\r\n"+
		"X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: evil\r\nVia: 1.0 edge\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"+
		"Proxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n")
	_, bodies, err := readResponses(br, "GET", 1)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(bodies[0]), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		got[k] = v
	}
	want := map[string]string{
		"Fly-Region":        "ord",
		"X-Forwarded-For":   "10.0.0.9, " + testPeer.String(),
		"X-Forwarded-Proto": "http",
		"Via":               "1.0 edge, 1.1 devgate",
		"X-Kept":            "yes",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, k := range []string{"X-Secret", "X-Forwarded-Host", "Proxy-Authorization", "Connection"} {
		if v, ok := got[k]; ok {
			t.Errorf("machine got %s: %q", k, v)
		}
	}
	if id := got["Fly-Request-Id"]; id == "forged" || id == "" {
		t.Errorf("Fly-Request-Id = %q", id)
	}
}

// TestFastPathCloseEndsRequests: Close ends a request waiting on its machine
// and the connection's goroutine; newEnv's cleanup checks for leaks.
func TestFastPathCloseEndsRequests(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
	select {
	case <-e.drv.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the machine")
	}
	done := make(chan error, 1)
	go func() { done <- e.p.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a request held by its machine")
	}
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Error("an answer after Close; want the connection ended")
	}
	close(e.drv.hold)
}

// TestChunkedBodyBound: a chunked body over its bound reaches the machine
// only up to the bound, and writeRequest reports the bound's error, which
// forward answers with 413.
func TestChunkedBodyBound(t *testing.T) {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	bw := bufio.NewWriter(&out)
	tg := &target{fc: &flowConn{src: "fdaa::1", port: 80}, id: "id"}
	err = writeRequest(bw, req, http.MaxBytesReader(nil, req.Body, 4), tg, "ord")
	bw.Flush()
	var tooBig *http.MaxBytesError
	if !errors.As(err, &tooBig) {
		t.Errorf("writeRequest = %v, want the bound's error", err)
	}
	if sent := out.String(); !strings.HasSuffix(sent, "\r\n\r\n4\r\n0123\r\n") {
		t.Errorf("machine got %q; want the body cut at 4 bytes", sent[max(0, len(sent)-40):])
	}
}

// TestFastPathHandOffLargeHeader hands off a request whose header is
// larger than the fast path's reader: every byte of it must reach net/http.
func TestFastPathHandOffLargeHeader(t *testing.T) {
	e := newEnv(t, envOpts{started: []string{"m1"}})
	c, br := e.rawConn()
	io.WriteString(c, "GET /echo HTTP/1.0\r\nHost: h\r\nX-Big: "+strings.Repeat("a", 6000)+"\r\n\r\n")
	_, bodies, err := readResponses(br, "GET", 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := "GET cl=0 te=[] "; bodies[0] != want {
		t.Errorf("handed-off request with a 6 KB header: %q, want %q", bodies[0], want)
	}
}

// TestFastPathClientGoneWhileQueued closes a client whose request waits in
// the queue behind a hard limit: its place is given up at once, as on the
// net/http path, and the request never reaches the machine.
func TestFastPathClientGoneWhileQueued(t *testing.T) {
	svc := httpService()
	svc[0].Concurrency.Hard = 1
	e := newEnv(t, envOpts{started: []string{"m1"}, app: App{Services: svc}, cfg: Config{QueueTimeout: time.Minute}})
	held := make(chan int, 1)
	go func() {
		code, _, _ := e.get(e.httpClient(), "/hold")
		held <- code
	}()
	select {
	case <-e.drv.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("first request never reached the machine")
	}
	c, _ := e.rawConn()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	waitQueued(t, e, 1)
	c.Close()
	queued := 1
	for i := 0; i < 1000 && queued > 0; i++ {
		time.Sleep(10 * time.Millisecond)
		e.p.mu.Lock()
		queued = len(e.p.appStates["hello"].queue)
		e.p.mu.Unlock()
	}
	if queued != 0 {
		t.Fatal("a closed client's request stayed in the queue")
	}
	close(e.drv.hold)
	if code := <-held; code != http.StatusOK {
		t.Fatalf("held request: %d", code)
	}
	if n := e.drv.servedBy("m1"); n != 1 {
		t.Errorf("machine served %d requests, want only the held one", n)
	}
}
