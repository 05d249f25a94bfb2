package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pushOnlyLast clears PSH on every outbound TCP data segment that the next
// packet of the batch continues, so each run of one flow's segments carries
// PSH once, on its last packet, as the segments of a kernel's TSO/GSO send
// do. gVisor sets PSH on every segment it sends, and a receiver's GRO (the
// kernel's, and wireguard-go's TCP GRO into its TUN) ends a coalesced
// segment at the first PSH: with PSH everywhere a laptop's stack handles
// each 1,392-byte packet alone. PSH still marks the end of each batch, so
// no data is held back. The checksum is updated incrementally (RFC 1624).
//
// pkts[i][offset:offset+sizes[i]] are IPv6 packets as the stack wrote them:
// no extension headers, so TCP starts at byte 40. Each is parsed once.
func pushOnlyLast(pkts [][]byte, sizes []int, offset int) {
	var prev []byte    // the previous packet, while its PSH may go
	var prevEnd uint32 // the sequence number just past prev's data
	for i := range pkts {
		p := pkts[i][offset : offset+sizes[i]]
		seq, end, ok := tcpData(p)
		if !ok { // not TCP, or a bare ACK or FIN: nothing for GRO to append
			prev = nil
			continue
		}
		// Same addresses (bytes 8-40) and ports (the first 4 bytes of TCP).
		if prev != nil && seq == prevEnd && string(prev[8:44]) == string(p[8:44]) {
			clearPSH(prev)
		}
		prev = nil
		if header.TCPFlags(p[40+13]) == header.TCPFlagAck|header.TCPFlagPsh {
			prev, prevEnd = p, end
		}
	}
}

// tcpData returns the sequence numbers of the first byte and one past the
// last byte of p's data, if p is an IPv6 TCP segment carrying data.
func tcpData(p []byte) (seq, end uint32, ok bool) {
	if len(p) < 60 || p[0]>>4 != 6 || p[6] != ipProtoTCP {
		return 0, 0, false
	}
	hl := int(p[40+12]>>4) * 4
	payload := int(binary.BigEndian.Uint16(p[4:])) - hl
	if hl < 20 || payload <= 0 || 40+hl+payload > len(p) {
		return 0, 0, false
	}
	seq = binary.BigEndian.Uint32(p[40+4:])
	return seq, seq + uint32(payload), true
}

// clearPSH clears the PSH flag of TCP segment p and updates its checksum.
func clearPSH(p []byte) {
	old := binary.BigEndian.Uint16(p[40+12:])
	p[40+13] &^= byte(header.TCPFlagPsh)
	now := binary.BigEndian.Uint16(p[40+12:])
	sum := binary.BigEndian.Uint16(p[40+16:])
	binary.BigEndian.PutUint16(p[40+16:], updateChecksum(sum, old, now))
}

// updateChecksum returns the Internet checksum sum after one 16-bit word
// of the summed data changed from old to now (RFC 1624, eqn. 3).
func updateChecksum(sum, old, now uint16) uint16 {
	return ^checksum.Combine(checksum.Combine(^sum, ^old), now)
}
