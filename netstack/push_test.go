package netstack

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpSeg returns an IPv6 TCP segment from testPeer to testSvc with a right
// checksum: sport→dport, seq, flags, a timestamp option and n payload bytes.
func tcpSeg(sport, dport uint16, seq uint32, flags header.TCPFlags, n int) []byte {
	tcp := make([]byte, 32+n)
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 8 << 4 // data offset: 20 + 12 option bytes
	tcp[13] = byte(flags)
	copy(tcp[20:], []byte{1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9}) // NOP NOP TS
	for i := 32; i < len(tcp); i++ {
		tcp[i] = byte(i * 7)
	}
	return withChecksum(6, tcp, 16)
}

func TestPushOnlyLast(t *testing.T) {
	const ap = header.TCPFlagAck | header.TCPFlagPsh
	const offset = 16 // wireguard-go reads behind its message header
	batch := [][]byte{
		tcpSeg(80, 5000, 1000, ap, 1320), // continued by the next: PSH cleared
		tcpSeg(80, 5000, 2320, ap, 1320), // continued: cleared
		tcpSeg(80, 5000, 3640, ap, 500),  // the run's last: kept
		tcpSeg(81, 5000, 4140, ap, 100),  // another flow; next is not contiguous: kept
		tcpSeg(81, 5000, 9999, ap, 100),  // followed by a bare ACK: kept
		tcpSeg(81, 5000, 10099, header.TCPFlagAck, 0),
		tcpSeg(82, 5000, 1, ap|header.TCPFlagFin, 10), // FIN: left alone
		tcpSeg(82, 5000, 11, ap, 10),                  // the batch's last: kept
	}
	want := []header.TCPFlags{header.TCPFlagAck, header.TCPFlagAck, ap, ap, ap, header.TCPFlagAck, ap | header.TCPFlagFin, ap}
	bufs := make([][]byte, len(batch))
	sizes := make([]int, len(batch))
	for i, p := range batch {
		bufs[i] = append(make([]byte, offset), p...)
		bufs[i] = append(bufs[i], make([]byte, 64)...) // room past the packet, as in wireguard-go's buffers
		sizes[i] = len(p)
	}
	pushOnlyLast(bufs, sizes, offset)
	for i := range bufs {
		p := bufs[i][offset : offset+sizes[i]]
		if got := header.TCPFlags(p[40+13]); got != want[i] {
			t.Errorf("packet %d: flags %#x, want %#x", i, got, want[i])
		}
		if !l4ChecksumOK(p) {
			t.Errorf("packet %d: checksum wrong after the update", i)
		}
	}
}

func TestUpdateChecksum(t *testing.T) {
	// Every single-word change, checked against a full recomputation, over
	// sums that exercise the end-around carry.
	for _, c := range []struct{ sum, old, now uint16 }{
		{0x0000, 0x5018, 0x5010}, {0xffff, 0x5018, 0x5010}, {0x1234, 0x0000, 0xffff},
		{0xfffe, 0xffff, 0x0000}, {0x8000, 0x0001, 0x8000},
	} {
		// data = [old, x] with x chosen so the checksum of data is c.sum.
		x := ^uint16(0) - c.sum - c.old
		want := csum16(c.now, x)
		if got := updateChecksum(csum16(c.old, x), c.old, c.now); got != want {
			t.Errorf("update(%#x: %#x→%#x) = %#x, recomputed %#x", csum16(c.old, x), c.old, c.now, got, want)
		}
	}
}

// csum16 is the Internet checksum of the given words, by gVisor's code.
func csum16(words ...uint16) uint16 {
	b := make([]byte, 0, 2*len(words))
	for _, w := range words {
		b = binary.BigEndian.AppendUint16(b, w)
	}
	return ^checksum.Checksum(b, 0)
}
