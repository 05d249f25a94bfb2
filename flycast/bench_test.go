package flycast

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/devgate/devgate/store"
)

func BenchmarkPick(b *testing.B) {
	list := make([]*machineState, 16)
	for i := range list {
		ms := &machineState{id: strconv.Itoa(i), load: i % 5}
		ms.rec = store.Machine{ID: ms.id, State: store.MachineStarted, Region: []string{"ord", "ams"}[i%2]}
		list[i] = ms
	}
	c := Concurrency{Type: "connections", Soft: 3, Hard: 10}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if best, _, _ := pick(list, c, "ord", i); best == nil {
			b.Fatal("no pick")
		}
	}
}

// BenchmarkSplice measures raw TCP throughput through the proxy over
// loopback: client -> proxy splice -> backend that discards.
func BenchmarkSplice(b *testing.B) {
	e := newEnv(b, envOpts{kind: "sink", started: []string{"m1"}})
	c, err := e.dial(rawDst)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-e.drv.sunk:
		if n != int64(b.N)*int64(len(chunk)) {
			b.Fatalf("backend got %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
		}
	case <-time.After(60 * time.Second):
		b.Fatal("backend never saw EOF")
	}
	b.StopTimer()
}

// BenchmarkColdWake measures a cold raw-TCP connect (wake, readiness, dial,
// first echo) over a driver whose machine listens at once: the time the
// proxy adds to a cold start.
func BenchmarkColdWake(b *testing.B) {
	e := newEnv(b, envOpts{kind: "echo", app: App{AutoStart: true}})
	ctx := context.Background()
	times := make([]time.Duration, 0, b.N)
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := e.p.StopMachine(ctx, "m1"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		begin := time.Now()
		c, err := e.dial(rawDst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(begin))
		b.StopTimer()
		c.Close()
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds()), "median-µs/wake")
}

// BenchmarkRouteTCP is the packet-path lookup: it must not allocate.
func BenchmarkRouteTCP(b *testing.B) {
	e := newEnv(b, envOpts{kind: "echo", noStart: true})
	src := netip.AddrPortFrom(testPeer, 40000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if e.p.RouteTCP(src, rawDst) == nil {
			b.Fatal("no route")
		}
	}
}

// BenchmarkHTTPRequest is keep-alive GETs through the http handler to a
// started machine and its 13-byte answer, over loopback, from 16
// connections at once: the proxy's CPU per request without the tunnel
// (the machine's server and the clients run in the same process).
func BenchmarkHTTPRequest(b *testing.B) {
	e := newEnv(b, envOpts{started: []string{"m1"}})
	req := []byte("GET / HTTP/1.1\r\nHost: hello.flycast\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	want := "hello from m1"
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := e.dial(httpDst)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		buf := make([]byte, len(want))
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != want {
				b.Errorf("answer %q, %v", buf, err)
				return
			}
			resp.Body.Close()
		}
	})
}
