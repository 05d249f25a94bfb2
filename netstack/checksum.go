package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const (
	ipProtoTCP = 6
	ipProtoUDP = 17
)

// l4ChecksumOK reports whether an IPv6 packet's TCP, UDP or ICMPv6
// checksum is right. The link tells gVisor that checksums are already
// checked (CapabilityRXChecksumOffload), because GRO's merged segments
// carry the first segment's checksum and would otherwise fail; so the link
// checks each packet here, once, before GRO. Packets of other protocols,
// and non-first fragments (whose checksum covers the reassembled whole),
// pass unchecked: WireGuard has already authenticated every byte from the
// peer, so a wrong checksum can only come from the peer's own stack.
// p has passed inspect, so it is at least an IPv6 header long.
func l4ChecksumOK(p []byte) bool {
	nh, off := p[6], 40
	for range maxExtensionHeaders {
		switch nh {
		case ipProtoHopByHop, ipProtoRouting, ipProtoDestOpts:
			if off+2 > len(p) {
				return false
			}
			nh, off = p[off], off+(int(p[off+1])+1)*8
		case ipProtoFragment:
			return true
		case ipProtoTCP, ipProtoUDP, ipProtoICMPv6:
			if off > len(p) {
				return false
			}
			seg := p[off:]
			// The payload length field, not len(p), bounds the segment:
			// gVisor trims padding the same way.
			if pl := 40 + (int(p[4])<<8 | int(p[5])); pl < len(p) {
				if pl < off {
					return false
				}
				seg = p[off:pl]
			}
			if len(seg) > 0xffff {
				return false
			}
			src := tcpip.AddrFrom16Slice(p[8:24])
			dst := tcpip.AddrFrom16Slice(p[24:40])
			sum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(nh), src, dst, uint16(len(seg)))
			return checksum.Checksum(seg, sum) == 0xffff
		default:
			return true
		}
	}
	return false
}
