package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
)

// addrBind is a conn.Bind on one UDP socket bound to one local address, for
// gateways that must not listen on every interface. It moves one packet
// per call; conn.NewDefaultBind (all addresses) is the fast path.
type addrBind struct {
	addr netip.Addr

	mu sync.Mutex
	c  *net.UDPConn
}

var _ conn.Bind = (*addrBind)(nil)

func (b *addrBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	network := "udp6"
	if b.addr.Is4() {
		network = "udp4"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.addr, port)))
	if err != nil {
		return nil, 0, err
	}
	b.c = c
	recv := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, ap, err := c.ReadFromUDPAddrPort(packets[0])
		if err != nil {
			return 0, err // net.ErrClosed after Close, as conn.Bind requires
		}
		sizes[0] = n
		eps[0] = &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		return 1, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (b *addrBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return nil
	}
	err := b.c.Close()
	b.c = nil
	return err
}

func (b *addrBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	c := b.c
	b.mu.Unlock()
	if c == nil {
		return net.ErrClosed
	}
	e, ok := ep.(*conn.StdNetEndpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	for _, buf := range bufs {
		if _, err := c.WriteToUDPAddrPort(buf, e.AddrPort); err != nil {
			return err
		}
	}
	return nil
}

func (b *addrBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
	}
	if ap.Addr().Is4() != b.addr.Is4() {
		return nil, errors.New("endpoint address family differs from the listen address")
	}
	return &conn.StdNetEndpoint{AddrPort: ap}, nil
}

func (b *addrBind) SetMark(uint32) error { return nil }
func (b *addrBind) BatchSize() int       { return 1 }

// gsoLimit bounds the bytes of one Send call to gsoBind's inner bind. Linux
// gives up on UDP segmentation offload for an skb of 64 KiB or more counting
// its link-layer header (gso_max_size, 65,536 on veth and most NICs) and cuts
// it into single datagrams in software before the device. wireguard-go
// coalesces datagrams up to 65,507 bytes of UDP payload, so the limit leaves
// room for Ethernet, a VLAN tag, IPv6 and UDP (14+4+40+8 bytes).
const gsoLimit = 1<<16 - 1 - 14 - 4 - 40 - 8

// gsoBind splits each Send into calls of at most gsoLimit bytes, so that
// every UDP GSO message wireguard-go builds leaves the host whole. It
// matters for the netstack's packets: gVisor reserves TCP option room for
// SACK blocks, so its full segments are 1,392 bytes (1,424 once sealed), 46
// of which make a 65,504-byte message that the kernel then segments in
// software; wireguard-go on a kernel TUN sends 1,452-byte datagrams, 45 per
// message, and never meets the limit.
type gsoBind struct{ conn.Bind }

func (b gsoBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	start, n := 0, 0
	for i, buf := range bufs {
		if n+len(buf) > gsoLimit && i > start {
			if err := b.Bind.Send(bufs[start:i], ep); err != nil {
				return err
			}
			start, n = i, 0
		}
		n += len(buf)
	}
	return b.Bind.Send(bufs[start:], ep)
}
