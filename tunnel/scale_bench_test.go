package tunnel_test

import (
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/tunnel"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// scalePeers is the peer count of the scale benchmarks: the number of
// laptops a gateway is sized for.
const scalePeers = 10000

// makePeers returns n peers with fresh keys, each with its own /120 in one
// network under gateway number gw, as the gateway configures them.
func makePeers(tb testing.TB, gw uint16, n int) []tunnel.Peer {
	tb.Helper()
	ps := make([]tunnel.Peer, n)
	for i := range ps {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		addr, err := peers.Peer(network, gw, uint32(i+1))
		if err != nil {
			tb.Fatal(err)
		}
		ps[i] = tunnel.Peer{PublicKey: k.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, peers.PeerPrefixLen).Masked()}}
	}
	return ps
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// vmRSS is the process's resident set in bytes, from /proc (0 elsewhere).
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkIdlePeers10k measures what 10,000 configured, idle peers cost:
// heap and RSS per peer (B/peer metrics, over the device with no peers)
// and the time from an empty device to one with every peer set (start-ms:
// tunnel.New plus SetPeers, what a gateway restart does). Each iteration
// builds a fresh stack and tunnel.
func BenchmarkIdlePeers10k(b *testing.B) {
	ps := makePeers(b, 1, scalePeers)
	logf := func(string, ...any) {}
	var heapPer, rssPer, startMS float64
	for range b.N {
		b.StopTimer()
		st, err := netstack.New(netstack.Config{Router: &testRouter{}, Logf: logf})
		if err != nil {
			b.Fatal(err)
		}
		key, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		tn, err := tunnel.New(tunnel.Config{PrivateKey: key, TUN: st.TUN(), Logf: logf})
		if err != nil {
			b.Fatal(err)
		}
		newTime := time.Since(start)
		b.StopTimer()
		heap0, rss0 := heapInUse(), vmRSS()
		b.StartTimer()
		start = time.Now()
		if err := tn.SetPeers(ps); err != nil {
			b.Fatal(err)
		}
		elapsed := newTime + time.Since(start)
		b.StopTimer()
		heap1, rss1 := heapInUse(), vmRSS()
		heapPer += float64(int64(heap1)-int64(heap0)) / scalePeers
		rssPer += float64(int64(rss1)-int64(rss0)) / scalePeers
		startMS += float64(elapsed.Microseconds()) / 1000
		if got, err := tn.Stats(); err != nil || len(got) != scalePeers {
			b.Fatalf("gateway reports %d peers (%v), want %d", len(got), err, scalePeers)
		}
		tn.Close()
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(heapPer/float64(b.N), "heap-B/peer")
	b.ReportMetric(rssPer/float64(b.N), "rss-B/peer")
	b.ReportMetric(startMS/float64(b.N), "start-ms")
}
