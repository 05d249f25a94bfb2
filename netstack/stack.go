package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	// DefaultMTU leaves room for WireGuard's 80 bytes of IPv6+UDP+WireGuard
	// overhead inside a 1500-byte Ethernet MTU, as wg-quick does.
	DefaultMTU = 1420

	// DefaultMaxSYNInFlight bounds handshakes held open across all peers
	// (each holds a goroutine and a segment). Beyond it new SYNs are ignored
	// and the client retransmits.
	DefaultMaxSYNInFlight = 1024

	// DefaultMaxSYNPerPeer bounds handshakes held open for one source
	// address, so one peer cannot use up the global budget. Beyond it the
	// SYN gets a RST.
	DefaultMaxSYNPerPeer = 64

	// tcpBufferDefault and tcpBufferMax are TCP buffer sizes, as Tailscale
	// uses: large enough for a fast single stream, with moderation growing
	// the receive buffer only for flows that need it.
	tcpBufferDefault = 1 << 20
	tcpBufferMax     = 8 << 20

	// tcpSendBufferMax caps send-buffer auto-tuning lower than the receive
	// side. Every packet the stack has sent but wireguard-go has not yet
	// put on the wire pins one of wireguard-go's 64 KiB message buffers, so
	// bytes queued in the gateway cost ~45x their size in memory. In
	// bench/run, one download stream peaked the gateway at ~770 MiB RSS
	// with 8 MiB and 225-280 MiB with 2 MiB while the outbound queue held
	// 1,024 packets. Since that queue is one batch the stream is CPU-bound
	// rather than window-bound: 1 MiB and 2 MiB moved the same 1.1-1.3
	// Gbit/s in an A/B (3 runs each), with peak RSS 115-125 against
	// 134-156 MiB.
	tcpSendBufferMax = 1 << 20

	nicID tcpip.NICID = 1
)

// ErrClosed is returned by methods of a closed Stack.
var ErrClosed = errors.New("netstack: stack closed")

// Config configures a Stack. Router is required.
type Config struct {
	// MTU of the NIC; 0 means DefaultMTU.
	MTU int
	// Router says which addresses exist and who serves TCP on them.
	Router Router
	// MaxSYNInFlight bounds TCP handshakes in progress; 0 means the default.
	MaxSYNInFlight int
	// MaxSYNPerPeer bounds handshakes in progress per source address; 0
	// means the default.
	MaxSYNPerPeer int
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// Stack is the gateway's userspace IP stack.
type Stack struct {
	cfg    Config
	router Router
	logf   func(string, ...any)
	stack  *stack.Stack
	link   *link
	stats  counters

	mu      sync.Mutex
	closed  bool
	synPeer map[netip.Addr]int // SYNs in flight per source address
	addrs   map[netip.Addr]int // listener addresses on the NIC, refcounted
	wg      sync.WaitGroup     // TCP flow goroutines

	closeOnce sync.Once
}

// New builds and starts a Stack.
func New(cfg Config) (*Stack, error) {
	if cfg.Router == nil {
		return nil, errors.New("netstack: Config.Router is required")
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < header.IPv6MinimumMTU {
		return nil, fmt.Errorf("netstack: MTU %d is below IPv6's minimum of %d", cfg.MTU, header.IPv6MinimumMTU)
	}
	if cfg.MaxSYNInFlight <= 0 {
		cfg.MaxSYNInFlight = DefaultMaxSYNInFlight
	}
	if cfg.MaxSYNPerPeer <= 0 {
		cfg.MaxSYNPerPeer = DefaultMaxSYNPerPeer
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s := &Stack{
		cfg:     cfg,
		router:  cfg.Router,
		logf:    logf,
		synPeer: make(map[netip.Addr]int),
		addrs:   make(map[netip.Addr]int),
	}
	s.link = newLink(uint32(cfg.MTU), s.inspect)
	s.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
	})
	if err := s.setup(); err != nil {
		s.stack.Close()
		s.stack.Wait()
		s.link.closeTUN()
		return nil, err
	}
	return s, nil
}

func (s *Stack) setup() error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferDefault, Max: tcpBufferMax}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferDefault, Max: tcpSendBufferMax}
	// No RACK: gVisor's RACK walks every segment in flight on every ACK
	// (rackControl.detectLoss was 5% of the gateway's CPU sending one
	// stream; one A/B download went 0.65 -> 0.93 Gbit/s without it, inside
	// this machine's noise). Loss recovery stays SACK-based with
	// duplicate-ACK fast retransmit. Tailscale's netstack turns RACK off
	// too (tailscale/tailscale#9707: spurious retransmissions). Congestion
	// control stays gVisor's default, reno.
	recovery := tcpip.TCPRecovery(0)
	opts := map[string]tcpip.SettableTransportProtocolOption{
		"SACK": &sack, "receive buffer moderation": &moderate, "receive buffer": &rcv, "send buffer": &snd,
		"loss recovery": &recovery,
	}
	for name, opt := range opts {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("netstack: set TCP %s: %s", name, err)
		}
	}
	if err := s.stack.CreateNIC(nicID, s.link); err != nil {
		return fmt.Errorf("netstack: create NIC: %s", err)
	}
	// Promiscuous: accept packets to every address, since the stack
	// answers for all of them. Spoofing: reply from those addresses.
	if err := s.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	if err := s.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	s.stack.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: nicID}})
	fwd := tcp.NewForwarder(s.stack, 0, s.cfg.MaxSYNInFlight, s.handleSYN)
	s.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	return nil
}

// TUN returns the device wireguard-go reads outbound packets from and
// writes inbound packets to.
func (s *Stack) TUN() tun.Device { return tunDevice{s.link} }

// Close closes the stack and every connection on it, and waits for the
// stack's goroutines and for running TCPHandler.ServeTCP calls to return.
// ServeTCP calls should return once their Accept fails or their connection
// breaks. Close is idempotent.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.link.closeTUN() // unblocks writers waiting for queue space
		s.stack.Close()
		s.stack.Wait()
		s.wg.Wait()
		s.stack.Destroy()
		s.link.drain() // packets queued after the first drain
	})
	return nil
}

// ListenTCP listens on addr inside the stack. The address is added to the
// NIC until the listener closes, so replies come from it.
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	if err := s.holdAddr(addr.Addr()); err != nil {
		return nil, err
	}
	l, err := gonet.ListenTCP(s.stack, fullAddr(addr), ipv6.ProtocolNumber)
	if err != nil {
		s.releaseAddr(addr.Addr())
		return nil, fmt.Errorf("netstack: listen tcp %s: %w", addr, err)
	}
	return &tcpListener{TCPListener: l, release: func() { s.releaseAddr(addr.Addr()) }}, nil
}

// ListenUDP opens a UDP socket on addr inside the stack, like ListenTCP.
func (s *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	if err := s.holdAddr(addr.Addr()); err != nil {
		return nil, err
	}
	la := fullAddr(addr)
	c, err := gonet.DialUDP(s.stack, &la, nil, ipv6.ProtocolNumber)
	if err != nil {
		s.releaseAddr(addr.Addr())
		return nil, fmt.Errorf("netstack: listen udp %s: %w", addr, err)
	}
	return &udpConn{UDPConn: c, release: func() { s.releaseAddr(addr.Addr()) }}, nil
}

func (s *Stack) holdAddr(a netip.Addr) error {
	if !a.Is6() || a.Is4In6() {
		return fmt.Errorf("netstack: %s is not an IPv6 address", a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.addrs[a] == 0 {
		pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom16(a.As16()).WithPrefix()}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add address %s: %s", a, err)
		}
	}
	s.addrs[a]++
	return nil
}

func (s *Stack) releaseAddr(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs[a]--
	if s.addrs[a] > 0 {
		return
	}
	delete(s.addrs, a)
	if s.closed {
		return
	}
	if err := s.stack.RemoveAddress(nicID, tcpip.AddrFrom16(a.As16())); err != nil {
		s.logf("netstack: remove address %s: %s", a, err)
	}
}

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(a.Addr().As16()), Port: a.Port()}
}

type tcpListener struct {
	*gonet.TCPListener
	once    sync.Once
	release func()
}

func (l *tcpListener) Close() error {
	err := l.TCPListener.Close()
	l.once.Do(l.release)
	return err
}

type udpConn struct {
	*gonet.UDPConn
	once    sync.Once
	release func()
}

func (c *udpConn) Close() error {
	err := c.UDPConn.Close()
	c.once.Do(c.release)
	return err
}

// Stats are the stack's counters since New.
type Stats struct {
	RxPackets            uint64 // packets from peers injected into the stack
	TxPackets            uint64 // packets handed to wireguard-go
	DroppedNotIPv6       uint64 // IPv4 or garbage
	DroppedMalformed     uint64 // truncated IPv6 or too many extension headers
	DroppedCrossNetwork  uint64 // destination outside the source's /48
	DroppedEchoNoAddress uint64 // echo request to an address that does not exist
	DroppedICMPOther     uint64 // ICMPv6 types with no use here (NDP, MLD, ...)
	DroppedBadChecksum   uint64 // TCP, UDP or ICMPv6 checksum wrong
	RefusedNoRoute       uint64 // TCP SYN answered with RST: nothing serves it
	RefusedSYNLimit      uint64 // TCP SYN answered with RST: peer's SYN budget spent
	TCPAccepted          uint64 // TCP connections handed to handlers
	ACKsCarried          uint64 // bare ACKs held and then carried by the reply
	ACKsDelayed          uint64 // bare ACKs held and sent when due (no reply in time)
}

type counters struct {
	droppedNotIPv6, droppedMalformed, droppedCrossNetwork, droppedEchoNoAddress, droppedICMPOther atomic.Uint64
	refusedNoRoute, refusedSYNLimit, tcpAccepted                                                  atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.stats
	return Stats{
		RxPackets:            s.link.rxPackets.Load(),
		TxPackets:            s.link.txPackets.Load(),
		DroppedNotIPv6:       c.droppedNotIPv6.Load(),
		DroppedMalformed:     c.droppedMalformed.Load(),
		DroppedCrossNetwork:  c.droppedCrossNetwork.Load(),
		DroppedEchoNoAddress: c.droppedEchoNoAddress.Load(),
		DroppedICMPOther:     c.droppedICMPOther.Load(),
		DroppedBadChecksum:   s.link.badChecksum.Load(),
		RefusedNoRoute:       c.refusedNoRoute.Load(),
		RefusedSYNLimit:      c.refusedSYNLimit.Load(),
		TCPAccepted:          c.tcpAccepted.Load(),
		ACKsCarried:          s.link.acks.carried.Load(),
		ACKsDelayed:          s.link.acks.delayed.Load(),
	}
}
