package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// withChecksum returns an IPv6 packet carrying body as protocol nh, with
// the checksum at csumOff inside body set right.
func withChecksum(nh byte, body []byte, csumOff int) []byte {
	p := packet(testPeer, testSvc, nh, body...)
	seg := p[40:]
	seg[csumOff], seg[csumOff+1] = 0, 0
	sum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(nh),
		tcpip.AddrFrom16(testPeer.As16()), tcpip.AddrFrom16(testSvc.As16()), uint16(len(seg)))
	c := ^checksum.Checksum(seg, sum)
	seg[csumOff], seg[csumOff+1] = byte(c>>8), byte(c)
	return p
}

func TestL4Checksum(t *testing.T) {
	tcp := make([]byte, 20+100)
	tcp[12] = 5 << 4 // data offset
	for i := 20; i < len(tcp); i++ {
		tcp[i] = byte(i)
	}
	udp := []byte{0x30, 0x39, 0, 53, 0, 12, 0, 0, 'a', 'b', 'c', 'd'}
	icmp := []byte{128, 0, 0, 0, 0, 1, 0, 1, 'x'}
	for _, tt := range []struct {
		name    string
		nh      byte
		body    []byte
		csumOff int
	}{{"tcp", 6, tcp, 16}, {"udp", 17, udp, 6}, {"icmpv6", 58, icmp, 2}} {
		good := withChecksum(tt.nh, tt.body, tt.csumOff)
		if !l4ChecksumOK(good) {
			t.Errorf("%s: a right checksum was rejected", tt.name)
		}
		bad := append([]byte(nil), good...)
		bad[len(bad)-1] ^= 0x40
		if l4ChecksumOK(bad) {
			t.Errorf("%s: a flipped payload bit passed", tt.name)
		}
		// Padding after the payload length is not part of the segment.
		padded := append(append([]byte(nil), good...), 0xde, 0xad)
		if !l4ChecksumOK(padded) {
			t.Errorf("%s: trailing padding made a right checksum fail", tt.name)
		}
	}
	// IPv6 forbids a zero UDP checksum.
	zero := packet(testPeer, testSvc, 17, udp...)
	if l4ChecksumOK(zero) {
		t.Error("UDP with checksum 0 passed")
	}
	// A payload length that points inside the headers is malformed.
	short := withChecksum(6, tcp, 16)
	short[4], short[5] = 0, 0
	if l4ChecksumOK(short) {
		t.Error("payload length shorter than the headers passed")
	}
	// Non-first fragments cannot be checked on their own.
	frag := packet(testPeer, testSvc, 44, 6, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3)
	if !l4ChecksumOK(frag) {
		t.Error("a fragment was rejected")
	}
}

// BenchmarkL4Checksum is the per-packet cost the link adds to inbound TCP
// (gVisor would otherwise spend the same in its TCP layer).
func BenchmarkL4Checksum(b *testing.B) {
	body := make([]byte, DefaultMTU-40)
	body[12] = 5 << 4
	p := withChecksum(6, body, 16)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if !l4ChecksumOK(p) {
			b.Fatal("rejected")
		}
	}
}
