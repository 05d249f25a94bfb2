package netstack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/devgate/devgate/peers"
)

// packet builds an IPv6 packet: 40-byte header, then payload, with next
// header nh.
func packet(src, dst netip.Addr, nh byte, payload ...byte) []byte {
	p := make([]byte, 40+len(payload))
	p[0] = 0x60
	p[4], p[5] = byte(len(payload)>>8), byte(len(payload))
	p[6], p[7] = nh, 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	copy(p[40:], payload)
	return p
}

func TestInspect(t *testing.T) {
	missing := peers.Flycast(testNet, 99)
	other := peers.Flycast(peers.NetworkPrefix(8), 1)
	echo := []byte{128, 0, 0, 0, 0, 1, 0, 1}
	fragFirst := append([]byte{58, 0, 0, 0, 0, 0, 0, 1}, echo...) // offset 0
	fragLater := append([]byte{58, 0, 0, 8, 0, 0, 0, 1}, 1, 2, 3) // offset 1
	tests := []struct {
		name    string
		pkt     []byte
		want    bool
		counter func(Stats) uint64
	}{
		{"ipv4", []byte{0x45, 0, 0, 20}, false, func(s Stats) uint64 { return s.DroppedNotIPv6 }},
		{"empty", nil, false, func(s Stats) uint64 { return s.DroppedNotIPv6 }},
		{"short ipv6", []byte{0x60, 0, 0}, false, func(s Stats) uint64 { return s.DroppedMalformed }},
		{"tcp same network", packet(testPeer, testSvc, 6, make([]byte, 20)...), true, nil},
		{"tcp other network", packet(testPeer, other, 6, make([]byte, 20)...), false, func(s Stats) uint64 { return s.DroppedCrossNetwork }},
		{"multicast", packet(testPeer, netip.MustParseAddr("ff02::1"), 58, 135, 0), false, func(s Stats) uint64 { return s.DroppedCrossNetwork }},
		{"echo to existing", packet(testPeer, testSvc, 58, echo...), true, nil},
		{"echo to missing", packet(testPeer, missing, 58, echo...), false, func(s Stats) uint64 { return s.DroppedEchoNoAddress }},
		{"echo in first fragment to missing", packet(testPeer, missing, 44, fragFirst...), false, func(s Stats) uint64 { return s.DroppedEchoNoAddress }},
		{"later fragment", packet(testPeer, missing, 44, fragLater...), true, nil},
		{"echo behind hop-by-hop", packet(testPeer, missing, 0, append([]byte{58, 0, 0, 0, 0, 0, 0, 0}, echo...)...), false, func(s Stats) uint64 { return s.DroppedEchoNoAddress }},
		{"neighbour solicitation", packet(testPeer, testSvc, 58, 135, 0, 0, 0), false, func(s Stats) uint64 { return s.DroppedICMPOther }},
		{"packet too big", packet(testPeer, testSvc, 58, 2, 0, 0, 0), true, nil},
		{"truncated extension", packet(testPeer, testSvc, 0, 58), false, func(s Stats) uint64 { return s.DroppedMalformed }},
		{"icmp without type", packet(testPeer, testSvc, 58), false, func(s Stats) uint64 { return s.DroppedMalformed }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestStack(t, Config{})
			if got := s.inspect(tt.pkt); got != tt.want {
				t.Errorf("inspect = %v, want %v", got, tt.want)
			}
			if tt.counter != nil && tt.counter(s.Stats()) != 1 {
				t.Errorf("counter not incremented: %+v", s.Stats())
			}
		})
	}
}

func FuzzInspect(f *testing.F) {
	f.Add(packet(testPeer, testSvc, 58, 128, 0, 0, 0))
	f.Add(packet(testPeer, testSvc, 44, 58, 0, 0, 0, 0, 0, 0, 1, 128))
	f.Add(packet(testPeer, testSvc, 0, 60, 0))
	f.Add([]byte{0x45})
	r := &router{exists: map[netip.Addr]bool{testSvc: true}}
	s, err := New(Config{Router: r})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, p []byte) {
		s.inspect(p) // must not panic
	})
}

// BenchmarkLink measures the link endpoint both ways: a batch of 1420-byte
// ICMPv6 echo requests written into the stack as wireguard-go would, and
// the batch of echo replies read back.
func BenchmarkLink(b *testing.B) {
	s, _ := newTestStack(b, Config{})
	dev := s.TUN()
	const batch = 64
	payload := make([]byte, DefaultMTU-40)
	payload[0] = 128 // echo request
	req := packet(testPeer, testSvc, 58, payload...)
	setICMPv6Checksum(req)
	in := make([][]byte, batch)
	out := make([][]byte, batch)
	for i := range in {
		in[i] = req
		out[i] = make([]byte, 2048)
	}
	sizes := make([]int, batch)
	b.SetBytes(int64(2 * batch * len(req)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := dev.Write(in, 0); err != nil {
			b.Fatal(err)
		}
		got := 0
		deadline := time.Now().Add(5 * time.Second)
		for got < batch && time.Now().Before(deadline) {
			n, err := dev.Read(out, sizes, 0)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
		if got != batch {
			b.Fatalf("read %d replies, want %d", got, batch)
		}
	}
}

// setICMPv6Checksum fills in the checksum of an ICMPv6 packet without
// extension headers.
func setICMPv6Checksum(p []byte) {
	body := p[40:]
	body[2], body[3] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(p[8:40])
	sum += uint32(len(body)) + 58
	add(body)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	body[2], body[3] = byte(c>>8), byte(c)
}
