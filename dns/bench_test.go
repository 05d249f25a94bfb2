package dns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/store"
)

// BenchmarkAnswerFlycast measures the pure private-name path: one
// <app>.flycast AAAA answered from a snapshot.
func BenchmarkAnswerFlycast(b *testing.B) {
	snap := fixtureSnapshot()
	s := New(Config{Snapshot: func() *store.Snapshot { return snap }})
	q := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	b.ReportAllocs()
	for b.Loop() {
		r := s.Answer(netA, q)
		if r == nil || len(r.Answer) != 1 {
			b.Fatal("no answer")
		}
	}
}

// BenchmarkServeUDP measures round trips of hello.flycast AAAA over real
// loopback UDP sockets, from parallel clients; it reports queries/s.
func BenchmarkServeUDP(b *testing.B) {
	ts := startServer(b, Config{Logf: func(string, ...any) {}})
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ts.udpAddr))
	q, err := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: srcA.AsSlice()}, dst)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 1500)
		for pb.Next() {
			if _, err := c.Write(q); err != nil {
				b.Error(err)
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil || n < 12 || buf[3]&0xf != 0 {
				b.Errorf("reply: %d bytes, err %v", n, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
}
