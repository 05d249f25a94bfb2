package tunnel_test

import (
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgate/devgate/netstack"
)

// BenchmarkTCPThroughput measures one TCP stream from a userspace client
// through WireGuard on loopback into the gateway's netstack and a handler
// that discards. MB/s counts bytes the handler received.
func BenchmarkTCPThroughput(b *testing.B) {
	gw := newGateway(b, netstack.Config{}, "")
	var received atomic.Int64
	gw.serve(9, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	c, _ := gw.addClient(b, 1, false)
	conn := dialService(b, c, 9)
	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	want := int64(b.N) * int64(len(chunk))
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if got := received.Load(); got < want {
		b.Fatalf("handler received %d bytes, want %d", got, want)
	}
}

// BenchmarkTCPDownload is BenchmarkTCPThroughput the other way: a handler
// in the gateway's netstack writes, a userspace client on loopback reads.
// MB/s counts bytes the client received.
func BenchmarkTCPDownload(b *testing.B) {
	gw := newGateway(b, netstack.Config{}, "")
	chunk := make([]byte, 128<<10)
	gw.serve(9, func(c net.Conn) {
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

// serve answers TCP connections to the service's port with fn, which the
// connection is closed after.
func (gw *gateway) serve(port uint16, fn func(net.Conn)) {
	gw.router.tcp[netip.AddrPortFrom(service, port)] = handlerFunc(func(r netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fn(c)
	})
}
