package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ErrAnswered is returned by Accept when the request was already accepted or
// refused.
var ErrAnswered = errors.New("netstack: TCP request already answered")

// handleSYN runs for each new flow. gVisor's tcp.Forwarder already calls it
// on a fresh goroutine (after bounding in-flight SYNs by maxInFlight), so it
// may block without stalling the packet path; ServeTCP runs right here.
func (s *Stack) handleSYN(r *tcp.ForwarderRequest) {
	id := r.ID()
	src := netip.AddrPortFrom(netip.AddrFrom16(id.RemoteAddress.As16()), id.RemotePort)
	dst := netip.AddrPortFrom(netip.AddrFrom16(id.LocalAddress.As16()), id.LocalPort)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.Complete(true)
		return
	}
	if s.synPeer[src.Addr()] >= s.cfg.MaxSYNPerPeer {
		s.mu.Unlock()
		s.stats.refusedSYNLimit.Add(1)
		r.Complete(true)
		return
	}
	s.synPeer[src.Addr()]++
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	h := s.router.RouteTCP(src, dst)
	if h == nil {
		s.releaseSYN(src.Addr())
		s.stats.refusedNoRoute.Add(1)
		r.Complete(true)
		return
	}
	req := &tcpRequest{s: s, r: r, src: src, dst: dst}
	// A handler that returns without answering must not leave the SYN (and
	// its budget) held forever.
	defer req.Refuse()
	h.ServeTCP(req)
}

func (s *Stack) releaseSYN(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synPeer[a]--; s.synPeer[a] <= 0 {
		delete(s.synPeer, a)
	}
}

// tcpRequest implements TCPRequest over a gVisor forwarder request.
type tcpRequest struct {
	s        *Stack
	r        *tcp.ForwarderRequest
	src, dst netip.AddrPort

	mu       sync.Mutex
	answered bool
}

var _ TCPRequest = (*tcpRequest)(nil)

func (q *tcpRequest) Src() netip.AddrPort { return q.src }
func (q *tcpRequest) Dst() netip.AddrPort { return q.dst }

// answer marks the request answered; it reports false if it already was.
func (q *tcpRequest) answer() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.answered {
		return false
	}
	q.answered = true
	return true
}

// Accept completes the handshake and returns the connection. It blocks until
// the client's final ACK arrives or the handshake fails.
func (q *tcpRequest) Accept() (net.Conn, error) {
	if !q.answer() {
		return nil, ErrAnswered
	}
	defer q.s.releaseSYN(q.src.Addr())
	var wq waiter.Queue
	ep, err := q.r.CreateEndpoint(&wq)
	if err != nil {
		q.r.Complete(true)
		return nil, fmt.Errorf("netstack: accept %s -> %s: %w", q.src, q.dst, tcpipError(err))
	}
	q.r.Complete(false)
	q.s.stats.tcpAccepted.Add(1)
	// Keepalives let a vanished laptop's connections die instead of
	// keeping a backend awake forever.
	ep.SocketOptions().SetKeepAlive(true)
	return gonet.NewTCPConn(&wq, ep), nil
}

// Refuse answers the SYN with a RST. After Accept or a first Refuse it does
// nothing.
func (q *tcpRequest) Refuse() {
	if !q.answer() {
		return
	}
	q.s.releaseSYN(q.src.Addr())
	q.r.Complete(true)
}

// tcpipError converts a gVisor error at the package boundary.
type tcpipErr struct{ e tcpip.Error }

func (e *tcpipErr) Error() string { return e.e.String() }

func tcpipError(e tcpip.Error) error { return &tcpipErr{e} }
