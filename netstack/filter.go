package netstack

import (
	"encoding/binary"
	"net/netip"

	"github.com/devgate/devgate/peers"
)

// maxExtensionHeaders bounds how many IPv6 extension headers the filter walks
// to find the upper-layer protocol. A peer could chain many; more than this
// is dropped as malformed.
const maxExtensionHeaders = 8

const (
	ipProtoHopByHop = 0
	ipProtoRouting  = 43
	ipProtoFragment = 44
	ipProtoICMPv6   = 58
	ipProtoDestOpts = 60

	icmpv6DstUnreachable = 1
	icmpv6PacketTooBig   = 2
	icmpv6TimeExceeded   = 3
	icmpv6ParamProblem   = 4
	icmpv6EchoRequest    = 128
)

// inspect is the inbound filter: it reports whether a packet from a peer may
// enter the stack, and counts the ones that may not.
func (s *Stack) inspect(p []byte) bool {
	if len(p) < 1 || p[0]>>4 != 6 {
		s.stats.droppedNotIPv6.Add(1)
		return false
	}
	if len(p) < 40 {
		s.stats.droppedMalformed.Add(1)
		return false
	}
	src := netip.AddrFrom16([16]byte(p[8:24]))
	dst := netip.AddrFrom16([16]byte(p[24:40]))
	// The whole isolation rule: WireGuard's AllowedIPs already proved src
	// belongs to the peer, so src's /48 is the peer's network.
	if !peers.SameNetwork(src, dst) {
		s.stats.droppedCrossNetwork.Add(1)
		return false
	}
	nh, off := p[6], 40
	for range maxExtensionHeaders {
		switch nh {
		case ipProtoHopByHop, ipProtoRouting, ipProtoDestOpts:
			if off+2 > len(p) {
				s.stats.droppedMalformed.Add(1)
				return false
			}
			nh, off = p[off], off+(int(p[off+1])+1)*8
		case ipProtoFragment:
			if off+8 > len(p) {
				s.stats.droppedMalformed.Add(1)
				return false
			}
			// Only the first fragment carries the ICMPv6 type. Later ones
			// pass: if the first was dropped, reassembly never completes.
			if binary.BigEndian.Uint16(p[off+2:off+4])>>3 != 0 {
				return true
			}
			nh, off = p[off], off+8
		case ipProtoICMPv6:
			return s.inspectICMP(p, off, dst)
		default:
			return true // TCP, UDP and the rest are judged by the stack.
		}
	}
	s.stats.droppedMalformed.Add(1)
	return false
}

func (s *Stack) inspectICMP(p []byte, off int, dst netip.Addr) bool {
	if off >= len(p) {
		s.stats.droppedMalformed.Add(1)
		return false
	}
	switch p[off] {
	case icmpv6EchoRequest:
		// No answer at all for addresses that do not exist, as on a real
		// network: a ping must not reveal what the gateway could route.
		if !s.router.Exists(dst) {
			s.stats.droppedEchoNoAddress.Add(1)
			return false
		}
		return true
	case icmpv6DstUnreachable, icmpv6PacketTooBig, icmpv6TimeExceeded, icmpv6ParamProblem:
		// Errors about our own packets: path MTU discovery needs these.
		return true
	default:
		// Neighbour discovery, MLD, echo replies and the rest have no
		// meaning on a point-to-point tunnel into the gateway.
		s.stats.droppedICMPOther.Add(1)
		return false
	}
}
