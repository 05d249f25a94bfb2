package flycast

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devgate/devgate/netstack"
)

// Bounds on what an http client can make the proxy hold.
const (
	// httpReadHeaderTimeout cuts slow-loris clients that trickle headers.
	httpReadHeaderTimeout = 10 * time.Second
	// httpMaxHeaderBytes bounds request headers; net/http answers 431 above.
	httpMaxHeaderBytes = 64 << 10
	// httpIdleTimeout closes keep-alive connections with no request.
	httpIdleTimeout = 75 * time.Second
	// httpMaxBodyBytes bounds one request body.
	httpMaxBodyBytes = 256 << 20
	// backendIdleConns bounds pooled keep-alive connections per machine.
	backendIdleConns = 64
	// backendIdleTimeout retires pooled backend connections unused this
	// long (when next looked at: a machine's stop closes its pool anyway).
	backendIdleTimeout = 90 * time.Second
)

type connKey struct{}

// flowConn is an accepted client conn with the route it came in on. It
// releases the proxy's flow slot when closed.
type flowConn struct {
	net.Conn
	h        *portHandler
	src, dst string
	port     int
	once     sync.Once
	p        *Proxy
	// wake is the wake started at SYN time. The conn's first request
	// reports its failure rather than quietly trying another machine.
	// Only the http server's goroutine for this conn touches it.
	wake *wakeOp
	// frames follows the requests' framing (see framing.go).
	frames framing
}

func (c *flowConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.frames.feed(b[:n])
	}
	return n, err
}

func (c *flowConn) Close() error {
	c.once.Do(func() { c.p.flows.Add(-1) })
	return c.Conn.Close()
}

// connListener hands conns accepted by ServeTCP to the http.Server.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }

type logfWriter func(string, ...any)

func (f logfWriter) Write(b []byte) (int, error) {
	f("flycast: http: %s", strings.TrimSpace(string(b)))
	return len(b), nil
}

func (p *Proxy) initHTTP() {
	p.httpLn = &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
	p.httpConns = make(map[*httpConn]struct{})
	p.transport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: backendDialTimeout}).DialContext,
		MaxIdleConnsPerHost: backendIdleConns,
		IdleConnTimeout:     backendIdleTimeout,
		// A proxy passes encodings through: left on, the Transport would
		// ask the machine for gzip whenever the client did not say, and
		// inflate the answer itself.
		DisableCompression: true,
	}
	p.rp = p.newReverse()
	p.httpSrv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		ReadHeaderTimeout: httpReadHeaderTimeout,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          log.New(logfWriter(p.cfg.Logf), "", 0),
		BaseContext:       func(net.Listener) context.Context { return p.ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if rc, ok := c.(*replayConn); ok {
				c = rc.flowConn // handed off by the fast path
			}
			return context.WithValue(ctx, connKey{}, c)
		},
	}
}

// serveHTTPConn starts a wake at SYN time if needed, completes the
// handshake and serves the conn on the fast path (forward.go), or, for a
// force_https port, hands it to the net/http server. Each request is
// balanced on its own.
func (p *Proxy) serveHTTPConn(h *portHandler, r netstack.TCPRequest) {
	var wake *wakeOp
	if !h.forceHTTPS { // a redirect needs no machine
		wake = p.prewake(h.app)
	}
	c, err := r.Accept()
	if err != nil {
		p.flows.Add(-1)
		return
	}
	fc := &flowConn{Conn: c, h: h, p: p, src: r.Src().Addr().Unmap().String(),
		dst: r.Dst().String(), port: int(r.Dst().Port()), wake: wake}
	if !h.forceHTTPS {
		p.serveFast(fc)
		return
	}
	p.toServer(fc)
}

// toServer gives c to the net/http server, or closes it if the server has
// stopped.
func (p *Proxy) toServer(c net.Conn) {
	select {
	case p.httpLn.ch <- c:
	case <-p.httpLn.done:
		c.Close()
	}
}

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type target struct {
	addr    string
	fc      *flowConn
	id      string
	machine string
}

// failure names the machine a request failed on, for the log and the
// client's 502.
func (t *target) failure(err error) string {
	return fmt.Sprintf("app %s machine %s: %v", t.fc.h.app.Name, t.machine, err)
}

type targetKey struct{}

func (p *Proxy) serveHTTP(rw http.ResponseWriter, req *http.Request) {
	fc, ok := req.Context().Value(connKey{}).(*flowConn)
	if !ok {
		http.Error(rw, "no route", http.StatusMisdirectedRequest)
		return
	}
	if fc.frames.conflict() {
		// Both framings in one request: the classic request-smuggling
		// shape. Refuse it and drop the connection, whose next bytes
		// cannot be trusted to start a request.
		rw.Header().Set("Connection", "close")
		http.Error(rw, conflictMsg, http.StatusBadRequest)
		return
	}
	if !p.enterHandler() {
		http.Error(rw, ErrClosed.Error(), http.StatusServiceUnavailable)
		return
	}
	defer p.handlers.Done()
	if fc.h.forceHTTPS {
		http.Redirect(rw, req, "https://"+req.Host+req.URL.RequestURI(), http.StatusMovedPermanently)
		return
	}
	t, ms, err := p.pickMachine(req.Context(), fc)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer p.release(ms, fc.h.app.Name)
	req.Body = http.MaxBytesReader(rw, req.Body, httpMaxBodyBytes)
	sw := &statusWriter{ResponseWriter: rw}
	p.rp.ServeHTTP(sw, req.WithContext(context.WithValue(req.Context(), targetKey{}, t)))
	code := sw.code
	if code == 0 {
		code = http.StatusOK
	}
	p.served(fc, ms, code)
}

// The steps both http paths (net/http's and forward.go's) take per request.

// enterHandler counts a request handler for Close, which waits for them
// (net/http does not). It fails once the proxy is closed; otherwise the
// caller calls p.handlers.Done when the request ends.
func (p *Proxy) enterHandler() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.handlers.Add(1)
	return true
}

// pickMachine waits for the wake the connection's SYN started, if any, and
// acquires a machine for one request. A refusal is counted; the caller
// answers it with 503. Otherwise the caller releases the machine.
func (p *Proxy) pickMachine(ctx context.Context, fc *flowConn) (*target, *machineState, error) {
	h := fc.h
	var err error
	if w := fc.wake; w != nil {
		fc.wake = nil
		select {
		case <-w.done:
			err = w.err
		case <-ctx.Done():
			err = ctx.Err()
			if p.ctx.Err() != nil {
				err = ErrClosed
			}
		}
	}
	var ms *machineState
	var addr string
	if err == nil {
		ms, addr, err = p.acquireBackend(ctx, h.app, h.svc)
	}
	if err != nil {
		p.met.refused.WithLabelValues(h.app.Name, refuseReason(err)).Inc()
		return nil, nil, err
	}
	return &target{addr: addr, fc: fc, id: p.reqIDs.next(p.cfg.Region), machine: ms.id}, ms, nil
}

// served records a request's answer: the machine was active, and the
// status goes to devgate_requests_total.
func (p *Proxy) served(fc *flowConn, ms *machineState, code int) {
	ms.touch()
	p.met.requests.WithLabelValues(fc.h.app.Name, ms.id, strconv.Itoa(code)).Inc()
}

// newReverse builds the proxy's single ReverseProxy; the target is chosen
// per request and carried in the request's context.
func (p *Proxy) newReverse() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:    p.rewrite,
		Transport:  p.transport,
		BufferPool: spliceBuffers{}, // else every response allocates 32 KiB
		ErrorLog:   log.New(logfWriter(p.cfg.Logf), "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t, _ := r.Context().Value(targetKey{}).(*target)
			msg := "backend error"
			if t != nil {
				msg = t.failure(err)
			}
			p.cfg.Logf("flycast: %s", msg)
			if errors.Is(err, context.Canceled) {
				return
			}
			http.Error(w, msg, http.StatusBadGateway)
		},
	}
}

// rewrite points the request at the machine and adds Fly's headers.
// Client-sent copies of Fly's own headers are replaced, never trusted.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(*target)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = t.addr
	pr.Out.Host = pr.In.Host
	flyFields(t, p.cfg.Region, pr.In.Header, pr.Out.Header.Set)
}

// flyFields calls set with each field the proxy gives a request for a
// machine, Fly's headers: X-Forwarded-For and Via extend the client's
// values, the others replace whatever the client sent. Both http paths
// use it; ownRequestHeader names these fields too.
func flyFields(t *target, region string, in http.Header, set func(k, v string)) {
	set("Fly-Forwarded-Port", strconv.Itoa(t.fc.port))
	set("Fly-Region", region)
	set("Fly-Request-Id", t.id)
	set("X-Forwarded-For", extend(in["X-Forwarded-For"], t.fc.src))
	set("X-Forwarded-Proto", "http")
	set("Via", extend(in["Via"], "1.1 devgate"))
}

// extend appends own to a list-valued field's prior values.
func extend(prior []string, own string) string {
	if len(prior) == 0 {
		return own
	}
	return strings.Join(prior, ", ") + ", " + own
}

// spliceBuffers lends the proxy's copy buffers to ReverseProxy.
type spliceBuffers struct{}

func (spliceBuffers) Get() []byte  { return *bufPool.Get().(*[]byte) }
func (spliceBuffers) Put(b []byte) { bufPool.Put(&b) }

// requestIDs makes Fly-Request-Id values: a random per-process prefix and a
// counter, so they are unique without a lock or a syscall per request.
type requestIDs struct {
	prefix string
	n      atomic.Uint64
}

func newRequestIDs() requestIDs {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error()) // never fails on supported platforms
	}
	return requestIDs{prefix: hex.EncodeToString(b[:])}
}

func (r *requestIDs) next(region string) string {
	id := r.prefix + strconv.FormatUint(r.n.Add(1), 36)
	if region != "" {
		id += "-" + region
	}
	return id
}
