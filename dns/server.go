package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/store"
)

// Defaults and bounds. Every limit a remote party can push on has a name here.
const (
	// DefaultUpstreamTimeout bounds one exchange with one upstream resolver.
	DefaultUpstreamTimeout = 2 * time.Second
	// DefaultMaxForwardInFlight bounds concurrent forwarded queries. Each
	// forward holds a socket and a goroutine for up to the upstream timeout
	// times the number of upstreams, so a peer flooding us with names that
	// do not resolve must not be able to pile them up: beyond the bound a
	// query gets SERVFAIL at once.
	DefaultMaxForwardInFlight = 256
	// MaxUDPSize is the largest UDP reply we send and the size we advertise
	// in EDNS. 1232 bytes fits in any IPv6 path without fragmentation (DNS
	// flag day 2020) and inside the WireGuard MTU.
	MaxUDPSize = 1232
	// maxUDPQuerySize is the read buffer for UDP queries. A real query is
	// far smaller; a longer datagram is cut and then fails to parse (FORMERR).
	maxUDPQuerySize = 4096
	// MaxTCPConns bounds open TCP connections per listener. Beyond it the
	// listener stops accepting and new connections wait in the kernel's (or
	// netstack's) bounded backlog.
	MaxTCPConns = 128
	// tcpReadTimeout and tcpIdleTimeout bound how long a TCP client may hold
	// a connection open without sending a query (RFC 7766 suggests seconds).
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 8 * time.Second
	// writeTimeout bounds a reply write, so a client that does not read
	// cannot hold a handler.
	writeTimeout = 2 * time.Second
	// shutdownTimeout bounds how long Close waits for handlers in progress.
	shutdownTimeout = 5 * time.Second
)

// ErrServerClosed is returned by Serve and ServePacket after Close.
var ErrServerClosed = errors.New("dns: server closed")

// Config configures a Server. The zero value of each field has the default
// documented on it. Do not change a Config after New.
type Config struct {
	// Snapshot returns the current state. Called once per query; it must be
	// cheap and must not block. Nil (or a nil result) means empty state.
	Snapshot func() *store.Snapshot
	// Region is the gateway's region: top<N>.nearest.of.<app>.internal lists
	// started machines in this region first.
	Region string
	// Upstreams are the resolvers ("host:port") that every non-private name
	// is forwarded to, tried in order. None means such names get SERVFAIL.
	// See UpstreamsFromResolvConf.
	Upstreams []string
	// UpstreamTimeout bounds one exchange with one upstream. Default 2s.
	UpstreamTimeout time.Duration
	// MaxForwardInFlight bounds concurrent forwarded queries; queries beyond
	// it are answered SERVFAIL at once. Default 256.
	MaxForwardInFlight int
	// NetworkFor maps a query's source address to the asker's network.
	// Default: the network whose /48 holds the source IP in the current
	// snapshot. False means the asker is in no network: REFUSED.
	NetworkFor func(remote net.Addr) (store.NetworkKey, bool)
	// Observe, if set, is called once per reply sent by the handler with the
	// question type and the reply's rcode (for metrics). It must not block.
	// Queries that miekg/dns rejects before the handler (malformed, no or
	// several questions) are reported as qtype 0.
	Observe func(qtype uint16, rcode int)
	// Logf logs operational events (upstream failures). Nil discards them.
	Logf func(format string, args ...any)
}

// Server is a private DNS server. Create it with New, start it with Serve
// and ServePacket (as many listeners as needed), stop it with Close.
type Server struct {
	cfg      Config
	forwards chan struct{} // semaphore: one token per forward in flight

	ctx    context.Context // cancelled by Close; aborts forwards in progress
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	running []runningServer
	wg      sync.WaitGroup // one per Serve/ServePacket call in progress

	closeOnce sync.Once
}

type runningServer struct {
	srv *mdns.Server
	// closer is the listener or PacketConn: Close closes it too, in case
	// Close raced with the start and Shutdown found nothing started.
	closer interface{ Close() error }
}

// New returns a server for cfg. It has no side effects: nothing listens
// until Serve or ServePacket.
func New(cfg Config) *Server {
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.MaxForwardInFlight <= 0 {
		cfg.MaxForwardInFlight = DefaultMaxForwardInFlight
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	cfg.Upstreams = append([]string(nil), cfg.Upstreams...)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:      cfg,
		forwards: make(chan struct{}, cfg.MaxForwardInFlight),
		ctx:      ctx,
		cancel:   cancel,
	}
	if s.cfg.NetworkFor == nil {
		s.cfg.NetworkFor = s.networkOf
	}
	return s
}

// snapshot returns the current snapshot, never nil.
func (s *Server) snapshot() *store.Snapshot {
	if s.cfg.Snapshot != nil {
		if snap := s.cfg.Snapshot(); snap != nil {
			return snap
		}
	}
	return emptySnapshot
}

var emptySnapshot = store.Empty()

// networkOf is the default NetworkFor: the network whose /48 holds the
// source address.
func (s *Server) networkOf(remote net.Addr) (store.NetworkKey, bool) {
	ip, ok := addrIP(remote)
	if !ok {
		return store.NetworkKey{}, false
	}
	n, ok := s.snapshot().NetworkOf(ip)
	if !ok {
		return store.NetworkKey{}, false
	}
	return store.NetworkKey{Org: n.Org, Network: n.Name}, true
}

// addrIP extracts the IP of a UDP or TCP address (gVisor's gonet returns
// the same types as package net), unmapping IPv4-in-IPv6.
func addrIP(a net.Addr) (netip.Addr, bool) {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.AddrPort().Addr()
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	case nil:
		return netip.Addr{}, false
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap().WithZone("")
	return ip, ip.IsValid()
}

// ServePacket answers queries on pc (UDP) until Close. It always returns a
// non-nil error: ErrServerClosed after Close. pc is closed on return.
func (s *Server) ServePacket(pc net.PacketConn) error {
	pc = newReplyQueue(pc)
	srv := &mdns.Server{
		PacketConn:    pc,
		Handler:       &handler{s: s, tcp: false},
		UDPSize:       maxUDPQuerySize,
		WriteTimeout:  writeTimeout,
		MsgAcceptFunc: s.acceptMsg,
	}
	return s.serve(srv, pc, "udp")
}

// Serve answers queries on connections accepted from l (TCP) until Close.
// It always returns a non-nil error: ErrServerClosed after Close. l is
// closed on return. At most MaxTCPConns connections are served at once.
func (s *Server) Serve(l net.Listener) error {
	ll := newLimitListener(l, MaxTCPConns)
	srv := &mdns.Server{
		Listener:      ll,
		Handler:       &handler{s: s, tcp: true},
		ReadTimeout:   tcpReadTimeout,
		WriteTimeout:  writeTimeout,
		IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
		MsgAcceptFunc: s.acceptMsg,
	}
	return s.serve(srv, ll, "tcp")
}

func (s *Server) serve(srv *mdns.Server, closer interface{ Close() error }, proto string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = closer.Close() // like net/http: the listener is ours to close; nothing to report
		return ErrServerClosed
	}
	s.running = append(s.running, runningServer{srv: srv, closer: closer})
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	err := srv.ActivateAndServe()
	s.mu.Lock()
	closed := s.closed
	for i, r := range s.running {
		if r.srv == srv {
			s.running = append(s.running[:i], s.running[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	if err == nil {
		// miekg returns nil only after a shutdown, which only Close does.
		return ErrServerClosed
	}
	return fmt.Errorf("dns: serve %s: %w", proto, err)
}

// Close stops every server started by Serve and ServePacket, aborts
// forwards in progress and waits (up to a few seconds) for handlers to
// finish. It is idempotent and always returns nil.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		running := s.running
		s.running = nil
		s.mu.Unlock()

		s.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		for _, r := range running {
			if err := r.srv.ShutdownContext(ctx); err != nil {
				// Not started yet (Close raced with Serve) or handlers
				// outlived the timeout: closing the socket makes the serve
				// loop return either way.
				_ = r.closer.Close() // best effort; the error is the one we are handling
			}
		}
		s.wg.Wait()
	})
	return nil
}

// acceptMsg is miekg's default header check (FORMERR for no or several
// questions, NOTIMP for other opcodes) plus the Observe hook for rejects.
func (s *Server) acceptMsg(dh mdns.Header) mdns.MsgAcceptAction {
	action := mdns.DefaultMsgAcceptFunc(dh)
	switch action {
	case mdns.MsgReject:
		s.observe(0, mdns.RcodeFormatError)
	case mdns.MsgRejectNotImplemented:
		s.observe(0, mdns.RcodeNotImplemented)
	}
	return action
}

func (s *Server) observe(qtype uint16, rcode int) {
	if s.cfg.Observe != nil {
		s.cfg.Observe(qtype, rcode)
	}
}

// limitListener bounds the connections accepted from a listener: Accept
// waits for a free slot. Close unblocks a waiting Accept.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
