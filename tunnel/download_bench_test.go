package tunnel_test

import (
	"io"
	"net/netip"
	"testing"

	"github.com/devgate/devgate/netstack"
)

// BenchmarkTCPDownload is BenchmarkTCPThroughput the other way: a handler
// in the gateway's netstack writes, a userspace client on loopback reads.
// MB/s counts bytes the client received.
func BenchmarkTCPDownload(b *testing.B) {
	gw := newGateway(b, netstack.Config{}, "")
	chunk := make([]byte, 128<<10)
	gw.router.tcp[netip.AddrPortFrom(service, 9)] = handlerFunc(func(r netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	c, _ := gw.addClient(b, 1, false)
	conn := dialService(b, c, 9)
	buf := make([]byte, len(chunk))
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}
