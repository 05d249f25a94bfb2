package flycast

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The http handler's fast path: one goroutine per client connection reads
// each HTTP/1.1 request, forwards it on a pooled backend connection and
// relays the response, with no channels or helper goroutines in between.
// net/http's server and ReverseProxy cost about two thirds of the gateway's
// CPU per request (a background read, a context, and the Transport's read
// and write loops per request); this path answers the ordinary requests
// that are nearly all of the traffic.
//
// Anything else is handed, with the bytes read so far, to the net/http
// server, which serves the rest of the connection as before: HTTP/1.0,
// Upgrade (WebSocket), Expect: 100-continue, CONNECT, announced request
// trailers, bodies over the limit, and every request net/http would refuse
// (it re-reads it and answers 400, 431 or 501 itself), so the two paths
// never differ in what they refuse.

// httpConn is one client connection on the fast path.
type httpConn struct {
	p     *Proxy
	fc    *flowConn
	watch clientWatch // the current request's, reused
	rec   recorder
	br    *bufio.Reader
	bw    *bufio.Writer
	back  atomic.Pointer[backConn] // the request in flight, for Close
}

// recorder is the reader under an httpConn's bufio.Reader. While a header
// is read it keeps a copy of the bytes (for a hand-off to net/http) and
// bounds them as net/http does: MaxHeaderBytes plus its 4 KiB read slack.
type recorder struct {
	c      net.Conn
	on     bool
	buf    []byte
	remain int // bytes the header may still read; -1: no bound
}

var errHeaderTooLarge = errors.New("request header too large")

func (r *recorder) Read(b []byte) (int, error) {
	if r.remain >= 0 {
		if r.remain == 0 {
			return 0, errHeaderTooLarge
		}
		b = b[:min(len(b), r.remain)]
	}
	n, err := r.c.Read(b)
	if r.remain >= 0 {
		r.remain -= n
	}
	if r.on {
		r.buf = append(r.buf, b[:n]...)
	}
	return n, err
}

// replayConn is a client connection handed to the net/http server: it
// reads the bytes the fast path had read first.
type replayConn struct {
	*flowConn
	pending []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.flowConn.Read(b)
}

const (
	// httpBufSize is the size of each connection's read and write buffers.
	httpBufSize = 4 << 10
	// maxInformational bounds the 1xx responses relayed before the final one.
	maxInformational = 8
	// conflictMsg answers a request with both Content-Length and
	// Transfer-Encoding.
	conflictMsg = "request has both Content-Length and Transfer-Encoding; send only one"
)

// serveFast serves a client connection until it ends or is handed off.
func (p *Proxy) serveFast(fc *flowConn) {
	hc := &httpConn{p: p, fc: fc}
	hc.rec = recorder{c: fc, remain: -1}
	hc.br = bufio.NewReaderSize(&hc.rec, httpBufSize)
	hc.bw = bufio.NewWriterSize(fc, httpBufSize)
	if !p.trackHTTP(hc) {
		fc.Close()
		return
	}
	keep, handOff := true, false
	for keep && !handOff {
		keep, handOff = hc.serveOne()
	}
	p.untrackHTTP(hc)
	if handOff {
		p.handOff(fc, hc.rec.buf)
	} else {
		fc.Close()
	}
}

// trackHTTP adds a fast-path connection to those Close closes. It fails
// once the proxy is closed.
func (p *Proxy) trackHTTP(hc *httpConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.httpConns[hc] = struct{}{}
	return true
}

func (p *Proxy) untrackHTTP(hc *httpConn) {
	p.mu.Lock()
	delete(p.httpConns, hc)
	p.mu.Unlock()
}

// closeLocked ends the connection and its request in flight (Close).
func (hc *httpConn) closeLocked() {
	hc.fc.Close()
	if b := hc.back.Load(); b != nil {
		b.Close()
	}
}

// handOff gives the connection to the net/http server, which reads
// pending (the current request, and whatever followed it) first.
func (p *Proxy) handOff(fc *flowConn, pending []byte) {
	p.met.handOffs.Inc()
	fc.SetReadDeadline(time.Time{})
	p.toServer(&replayConn{flowConn: fc, pending: pending})
}

// serveOne serves one request. keep reports whether the connection may
// carry another; handOff that net/http must serve this request and the
// rest (hc.rec.buf holds its bytes).
func (hc *httpConn) serveOne() (keep, handOff bool) {
	p, fc := hc.p, hc.fc
	if hc.br.Buffered() == 0 {
		fc.SetReadDeadline(time.Now().Add(httpIdleTimeout))
		if _, err := hc.br.Peek(1); err != nil {
			return false, false // closed, reset or idle too long
		}
	}
	ahead, _ := hc.br.Peek(hc.br.Buffered())
	if !bytes.Contains(ahead, []byte("\r\n\r\n")) {
		fc.SetReadDeadline(time.Now().Add(httpReadHeaderTimeout))
	}
	hc.rec.buf = append(hc.rec.buf[:0], ahead...)
	hc.rec.on, hc.rec.remain = true, httpMaxHeaderBytes+httpBufSize-len(ahead)
	req, err := http.ReadRequest(hc.br)
	hc.rec.on, hc.rec.remain = false, -1
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || isTimeout(err) {
			return false, false // net/http, too, closes without an answer
		}
		return false, true // net/http answers it as it always has
	}
	if !ordinary(req) {
		return false, true // with hc.rec.buf, however large
	}
	if cap(hc.rec.buf) > httpBufSize {
		hc.rec.buf = nil // a large header's copy is not kept while idle
	}
	if fc.frames.conflict() {
		// Both framings in one request: the classic request-smuggling
		// shape. Refuse it and drop the connection, whose next bytes
		// cannot be trusted to start a request.
		hc.writeError(http.StatusBadRequest, conflictMsg, true)
		return false, false
	}
	hasBody := req.ContentLength != 0
	if !p.enterHandler() {
		hc.writeError(http.StatusServiceUnavailable, ErrClosed.Error(), true)
		return false, false
	}
	defer p.handlers.Done()
	ctx := p.ctx
	if !hasBody {
		hc.watch = clientWatch{Context: p.ctx, hc: hc}
		defer hc.watch.stop()
		ctx = &hc.watch
	}
	t, ms, err := p.pickMachine(ctx, fc)
	if err != nil {
		// An unread body leaves the connection unusable.
		hc.writeError(http.StatusServiceUnavailable, err.Error(), hasBody || req.Close)
		return !hasBody && !req.Close, false
	}
	defer p.release(ms, fc.h.app.Name)
	if hasBody {
		// A body may take long. The idle bound is set again before the
		// next request is waited for.
		fc.SetReadDeadline(time.Time{})
	}
	code, keep := hc.forward(req, ms, t)
	p.served(fc, ms, code)
	return keep && !req.Close, false
}

// clientWatch is the context a request without a body waits for a machine
// under (a wake, or the queue behind a hard limit): it ends with the proxy,
// or when the client closes its side, as net/http's request context does.
// The client is watched only once something waits on Done, so a request
// that finds a machine at once pays nothing. A request with a body is not
// watched: the bytes after its header are the body's.
type clientWatch struct {
	context.Context // the proxy's
	hc              *httpConn

	once    sync.Once
	ctx     context.Context
	cancel  context.CancelFunc
	watched chan struct{} // closed when the watching read returns
}

func (w *clientWatch) Done() <-chan struct{} {
	w.once.Do(func() {
		w.ctx, w.cancel = context.WithCancel(w.Context)
		w.watched = make(chan struct{})
		go func() {
			defer close(w.watched)
			// Pipelined bytes stay in the reader for the next request.
			if _, err := w.hc.br.Peek(1); err != nil && !isTimeout(err) {
				w.cancel() // the client closed or reset its side
			}
		}()
	})
	return w.ctx.Done()
}

func (w *clientWatch) Err() error {
	if w.ctx != nil {
		return w.ctx.Err()
	}
	return w.Context.Err()
}

// stop ends the watching read, if one started, before the connection is
// read again.
func (w *clientWatch) stop() {
	if w.watched == nil {
		return
	}
	w.hc.fc.SetReadDeadline(time.Now())
	<-w.watched
	w.hc.fc.SetReadDeadline(time.Time{})
	w.cancel()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// badGateway logs that the machine failed the request and answers 502,
// closing the connection.
func (hc *httpConn) badGateway(t *target, err error) (code int, keep bool) {
	msg := t.failure(err)
	hc.p.cfg.Logf("flycast: %s", msg)
	hc.writeError(http.StatusBadGateway, msg, true)
	return http.StatusBadGateway, false
}

// ordinary reports whether the fast path serves req: everything net/http
// would refuse, and every feature only ReverseProxy handles, goes to them.
func ordinary(req *http.Request) bool {
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Method == http.MethodConnect {
		return false
	}
	if req.ContentLength > httpMaxBodyBytes {
		return false
	}
	hd := req.Header
	if len(hd["Upgrade"]) > 0 || len(hd["Expect"]) > 0 || len(hd["Trailer"]) > 0 {
		return false
	}
	// The checks net/http's server makes before calling a handler.
	// ReadRequest has taken Host out of the header: in origin form (not
	// "GET http://host/"), req.Host is the one Host field's value.
	if req.URL.Host != "" || req.Host == "" || !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	for k, vs := range hd {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// forward sends req to the machine and its answer to the client. It
// returns the status the client got and whether the client connection is
// still in step (both messages complete).
func (hc *httpConn) forward(req *http.Request, ms *machineState, t *target) (code int, keep bool) {
	p := hc.p
	body := req.Body
	if req.ContentLength < 0 { // chunked: bound what it may send
		body = http.MaxBytesReader(nil, body, httpMaxBodyBytes)
	}
	var resp *http.Response
	var bc *backConn
	var err error
	replay := replayable(req)
	for attempt := 0; ; attempt++ {
		var reused bool
		bc, reused, err = p.backConn(ms, t.addr, !replay)
		if err != nil {
			break
		}
		hc.back.Store(bc)
		err = writeRequest(bc.bw, req, body, t, p.cfg.Region)
		if err == nil {
			// The first byte apart: ReadResponse reports an end of file
			// before it as unexpected, like one after.
			_, err = bc.br.Peek(1)
		}
		if err == nil {
			resp, err = http.ReadResponse(bc.br, req)
		}
		if err == nil {
			break
		}
		hc.back.Store(nil)
		p.dropBackConn(ms, bc)
		// A pooled connection the machine had closed: try a fresh one,
		// once, if the request may be sent twice.
		if !reused || !replay || attempt > 0 || !staleConnErr(err) {
			break
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			hc.writeError(http.StatusRequestEntityTooLarge, err.Error(), true)
			return http.StatusRequestEntityTooLarge, false
		}
		return hc.badGateway(t, err)
	}
	defer hc.back.Store(nil)
	for n := 0; resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols && n < maxInformational; n++ {
		writeHead(hc.bw, resp, false)
		if err = hc.bw.Flush(); err == nil {
			resp, err = http.ReadResponse(bc.br, req)
		}
		if err != nil {
			p.dropBackConn(ms, bc)
			return hc.badGateway(t, err) // a final answer may follow a 1xx
		}
	}
	if resp.StatusCode < 200 { // 101 without an Upgrade, or too many 1xx
		p.dropBackConn(ms, bc)
		return hc.badGateway(t, fmt.Errorf("unexpected %s", resp.Status))
	}
	keep, backOK := hc.relay(resp, bc, req.Close, ms)
	if backOK && !resp.Close {
		p.putBackConn(ms, bc)
	} else {
		p.dropBackConn(ms, bc)
	}
	return resp.StatusCode, keep
}

// relay writes resp to the client. keep reports whether the client got
// the whole response; backOK whether the backend connection is at the
// start of its next response.
func (hc *httpConn) relay(resp *http.Response, bc *backConn, closeAfter bool, ms *machineState) (keep, backOK bool) {
	chunked := writeHead(hc.bw, resp, closeAfter)
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	var sent int64
	for {
		n, rerr := resp.Body.Read(*buf)
		if n > 0 {
			var werr error
			if chunked {
				werr = writeChunk(hc.bw, (*buf)[:n])
			} else {
				_, werr = hc.bw.Write((*buf)[:n])
			}
			sent += int64(n)
			// Flush when the machine has nothing more ready, so that a
			// stream reaches the client as it comes and a small answer
			// leaves in one write.
			done := resp.ContentLength >= 0 && sent >= resp.ContentLength
			if werr == nil && bc.br.Buffered() == 0 && !done {
				ms.touch()
				werr = hc.bw.Flush()
			}
			if werr != nil {
				resp.Body.Close()
				return false, false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The response is cut short; so must the client's be.
			hc.p.cfg.Logf("flycast: app %s machine %s: response body: %v", hc.fc.h.app.Name, ms.id, rerr)
			return false, false
		}
	}
	if chunked {
		hc.bw.WriteString("0\r\n")
		writeFields(hc.bw, resp.Trailer, nil)
		hc.bw.WriteString("\r\n")
	}
	return hc.bw.Flush() == nil, true
}

// writeError answers with a short text error, as http.Error does.
func (hc *httpConn) writeError(code int, msg string, closeAfter bool) {
	bw := hc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(msg) + 1))
	if closeAfter {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	bw.WriteString(msg)
	bw.WriteByte('\n')
	bw.Flush()
}

// writeRequest writes req, with Fly's headers and without hop-by-hop ones,
// and its body, and flushes.
func writeRequest(bw *bufio.Writer, req *http.Request, body io.Reader, t *target, region string) error {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	writeFields(bw, req.Header, func(k string) bool { return ownRequestHeader[k] })
	flyFields(t, region, req.Header, func(k, v string) { field(bw, k, v) })
	switch {
	case req.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		buf := bufPool.Get().(*[]byte)
		defer bufPool.Put(buf)
		for {
			n, err := body.Read(*buf)
			if n > 0 {
				if err := writeChunk(bw, (*buf)[:n]); err != nil {
					return err
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		bw.WriteString("0\r\n\r\n")
	case req.ContentLength > 0 || len(req.Header["Content-Length"]) > 0:
		field(bw, "Content-Length", strconv.FormatInt(req.ContentLength, 10))
		bw.WriteString("\r\n")
		if _, err := io.Copy(bw, body); err != nil {
			return err
		}
	default:
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

// writeHead writes resp's status line and end-to-end headers, and the
// framing the client gets: resp's length if known, else chunked, which it
// reports.
func writeHead(bw *bufio.Writer, resp *http.Response, closeAfter bool) (chunked bool) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(resp.Status)
	bw.WriteString("\r\n")
	bodyless := resp.StatusCode < 200 || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified || resp.Request.Method == http.MethodHead
	writeFields(bw, resp.Header, func(k string) bool {
		return hopByHop[k] && k != "Trailer" || !bodyless && k == "Content-Length"
	})
	switch {
	case bodyless:
	case resp.ContentLength >= 0:
		field(bw, "Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		chunked = true
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	return chunked
}

// writeFields writes hd's fields but those skip names and those the
// Connection field names (hop-by-hop by declaration).
func writeFields(bw *bufio.Writer, hd http.Header, skip func(string) bool) {
	named := hd["Connection"]
	for k, vs := range hd {
		if skip != nil && skip(k) || len(named) > 0 && httpguts.HeaderValuesContainsToken(named, k) {
			continue
		}
		for _, v := range vs {
			field(bw, k, v)
		}
	}
}

func field(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

func writeChunk(bw *bufio.Writer, b []byte) error {
	var n [16]byte
	bw.Write(strconv.AppendInt(n[:0], int64(len(b)), 16))
	bw.WriteString("\r\n")
	bw.Write(b)
	_, err := bw.WriteString("\r\n")
	return err
}

// hopByHop are the fields that describe one connection, not the message
// (RFC 9110 7.6.1), as ReverseProxy drops them; framing is rewritten.
var hopByHop = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// ownRequestHeader are the request fields a machine gets only as the proxy
// writes them: hop-by-hop ones, framing, and Fly's (flyFields), whose
// client-sent copies are replaced, never trusted. X-Forwarded-Host is
// dropped, as ReverseProxy drops it.
var ownRequestHeader = map[string]bool{
	"Content-Length": true, "X-Forwarded-For": true, "X-Forwarded-Host": true,
	"X-Forwarded-Proto": true, "Via": true, "Fly-Forwarded-Port": true,
	"Fly-Region": true, "Fly-Request-Id": true,
}

func init() {
	for k := range hopByHop {
		ownRequestHeader[k] = true
	}
}
