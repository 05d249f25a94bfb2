package flycast

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// The http fast path's keep-alive connections to machines. Each machine
// keeps its own (machineState.idle), registered with its conns too, so a
// stop or an exit closes them and empties the pool at once.

// backConn is a keep-alive connection to a machine.
type backConn struct {
	net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// replayable reports whether req may be sent again after a pooled
// connection failed before any answer, as net/http's Transport does: no
// body, and a method without side effects or an idempotency key.
func replayable(req *http.Request) bool {
	if req.ContentLength != 0 {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	hd := req.Header
	return len(hd["Idempotency-Key"]) > 0 || len(hd["X-Idempotency-Key"]) > 0
}

// staleConnErr reports whether err is how a pooled connection the machine
// had closed fails: no byte of an answer.
func staleConnErr(err error) bool {
	return err == io.EOF || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// backConn returns a connection to machine ms at addr: the most recently
// pooled one, else a new one. If mustBeOpen (the request cannot be sent
// twice) a pooled connection is checked first.
func (p *Proxy) backConn(ms *machineState, addr string, mustBeOpen bool) (bc *backConn, reused bool, err error) {
	now := time.Now()
	for {
		p.mu.Lock()
		n := len(ms.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		bc = ms.idle[n-1]
		ms.idle[n-1] = nil
		ms.idle = ms.idle[:n-1]
		p.mu.Unlock()
		if now.Sub(bc.idleAt) < backendIdleTimeout && (!mustBeOpen || bc.open()) {
			return bc, true, nil
		}
		p.dropBackConn(ms, bc)
	}
	c, err := p.dialBackend(ms, addr)
	if err != nil {
		return nil, false, err
	}
	return &backConn{Conn: c, br: bufio.NewReaderSize(c, httpBufSize), bw: bufio.NewWriterSize(c, httpBufSize)}, false, nil
}

// open reports whether an idle backend connection is still open: a
// non-blocking peek would block, rather than find an end of file, a reset
// or stray bytes. (A read deadline cannot tell: Go fails a read whose
// deadline has passed before it looks at the socket.)
func (bc *backConn) open() bool {
	sc, ok := bc.Conn.(syscall.Conn)
	if !ok || bc.br.Buffered() > 0 {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	}); err != nil {
		return false
	}
	return rerr == syscall.EAGAIN // n == 0 with no error is an end of file
}

// putBackConn pools bc for the machine's next request, unless the machine
// stopped meanwhile (which closed bc) or its pool is full.
func (p *Proxy) putBackConn(ms *machineState, bc *backConn) {
	bc.idleAt = time.Now()
	p.mu.Lock()
	_, live := ms.conns[bc.Conn]
	if live && !p.closed && len(ms.idle) < backendIdleConns {
		ms.idle = append(ms.idle, bc)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.dropBackConn(ms, bc)
}

func (p *Proxy) dropBackConn(ms *machineState, bc *backConn) {
	bc.Close()
	p.forgetConn(ms, bc.Conn)
}
