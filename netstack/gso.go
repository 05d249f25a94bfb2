package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Host GSO. The link tells gVisor it segments TCP itself
// (stack.HostGSOSupported), so TCP hands it one packet of up to 64 KiB
// per send instead of one per MSS: one packet buffer, one header build and
// one trip through the stack's send path for up to 46 segments. read cuts
// each such packet straight into wireguard-go's buffers, one segment per
// buffer, as a NIC's TSO does: each segment gets its own sequence number,
// payload length and checksum, FIN and PSH stay on the last and CWR on the
// first. gVisor leaves only the pseudo-header's sum in the checksum field
// (CHECKSUM_PARTIAL), so every TCP packet, cut or not, is summed here.

// gsoMaxSize bounds the packets gVisor builds: an IPv6 payload length is
// 16 bits.
const gsoMaxSize = 0xffff

// segments is the outbound queue's room pkt takes: the link packets it
// becomes, at most the whole queue. A peer that announces a small MSS
// gets segments of a few hundred bytes, and a 64 KiB packet is then more
// than the queue holds; it must still fit, or its sender would wait for
// good holding the TCP endpoint's lock.
func segments(pkt *stack.PacketBuffer) int {
	g := pkt.GSOOptions
	if g.Type != stack.GSOTCPv6 || g.MSS == 0 {
		return 1
	}
	return min(max(1, (pkt.Data().Size()+int(g.MSS)-1)/int(g.MSS)), outboundSegments)
}

// cutter cuts one outbound packet into segments across reads. Only read
// uses it.
type cutter struct {
	pkt  *stack.PacketBuffer // nil when idle; holds one reference
	segs int                 // segments(pkt), the queue room it holds
	hdr  int                 // IPv6 and TCP header length
	mss  int
	next int // offset of the next segment's payload in the packet's data
}

// start takes pkt (and its reference) to cut; it holds segs of the
// queue's room. It reports false, and drops the packet, if it is not a TCP
// packet the link can cut (gVisor builds none such).
func (c *cutter) start(pkt *stack.PacketBuffer, segs int) bool {
	nh, th := pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice()
	if len(nh) != header.IPv6MinimumSize || len(th) < header.TCPMinimumSize || len(th) > header.TCPHeaderMaximumSize {
		pkt.DecRef()
		return false
	}
	c.pkt, c.segs, c.hdr, c.next = pkt, segs, len(nh)+len(th), 0
	c.mss = int(pkt.GSOOptions.MSS)
	if c.mss == 0 {
		c.mss = gsoMaxSize
	}
	return true
}

// cut writes the next segment into dst and returns its size, or -1 if dst
// is too small. done reports that it was the last.
func (c *cutter) cut(dst []byte) (n int, done bool) {
	total := c.pkt.Data().Size()
	size := min(c.mss, total-c.next)
	if c.hdr+size > len(dst) {
		return -1, false
	}
	first, last := c.next == 0, c.next+size >= total
	copyRange(dst[:c.hdr], c.pkt, 0) // the headers, then this segment's payload
	copyRange(dst[c.hdr:c.hdr+size], c.pkt, c.hdr+c.next)
	tcpLen := c.hdr - header.IPv6MinimumSize + size
	binary.BigEndian.PutUint16(dst[4:], uint16(tcpLen))
	tcp := header.TCP(dst[header.IPv6MinimumSize : c.hdr+size])
	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(c.next))
	flags := tcp.Flags()
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if !first {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom16Slice(dst[8:24]), tcpip.AddrFrom16Slice(dst[24:40]), uint16(tcpLen))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	c.next += size
	if last {
		c.pkt.DecRef()
		c.pkt = nil
	}
	return c.hdr + size, last
}

// drop releases the packet being cut (it does not fit, or the link is
// closing).
func (c *cutter) drop() {
	if c.pkt != nil {
		c.pkt.DecRef()
		c.pkt = nil
	}
}

// copyRange copies len(dst) bytes of pkt, from offset from (headers
// included), into dst without allocating.
func copyRange(dst []byte, pkt *stack.PacketBuffer, from int) {
	vl, off := pkt.AsViewList()
	off += from
	n := 0
	for v := vl.Front(); v != nil && n < len(dst); v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
}
