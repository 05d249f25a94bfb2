package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/store"
)

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// spawnBaseline is the process's own cost: the process driver starts the
// same binary, waits until it listens, and one GET is answered, with no
// tunnel and no proxy.
func spawnBaseline(b *testing.B, n int) []time.Duration {
	b.Helper()
	d, err := machines.NewProcessDriver(machines.ProcessConfig{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	exe, _ := os.Executable()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("base%010d", i)
		spec := machines.Spec{ID: id, App: "hello", Command: []string{exe, "hello"}, Ports: []int{80}, LogPath: filepath.Join(b.TempDir(), id+".log")}
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := d.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
		addr, err := d.Backend(id, 80)
		if err != nil {
			b.Fatal(err)
		}
		if err := machines.WaitReady(ctx, addr); err != nil {
			b.Fatal(err)
		}
		resp, err := hc.Get("http://" + addr.String() + "/")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		out = append(out, time.Since(t0))
		cancel()
		if err := d.Stop(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// BenchmarkColdWake measures what devgate adds to a cold request: a request
// through the userspace WireGuard client to hello.flycast with every machine
// stopped (wake, readiness, proxying, and the state writes), minus the
// process's own start-to-answer time measured the same way without devgate.
// Run with -benchtime=100x for the 100 wakes.
func BenchmarkColdWake(b *testing.B) {
	h := newHarness(b)
	h.launch("hello", "")
	c := h.dial(h.peer("personal", "laptop"))
	hc := c.HTTPClient()
	hc.Transport.(*http.Transport).DisableKeepAlives = true
	ctx := context.Background()
	stopAll := func() {
		for _, m := range h.machines("hello") {
			if m.State != store.MachineStopped {
				if err := h.api.StopMachine(ctx, m.ID); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	// One request warms DNS and the WireGuard handshake.
	if resp, err := hc.Get("http://hello.flycast/"); err == nil {
		resp.Body.Close()
	}
	cold := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		stopAll()
		b.StartTimer()
		t0 := time.Now()
		resp, err := hc.Get("http://hello.flycast/")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("cold request: %s", resp.Status)
		}
		cold = append(cold, time.Since(t0))
	}
	b.StopTimer()
	base := spawnBaseline(b, b.N)
	sort.Slice(cold, func(i, j int) bool { return cold[i] < cold[j] })
	sort.Slice(base, func(i, j int) bool { return base[i] < base[j] })
	b.ReportMetric(ms(percentile(cold, 50)), "cold-p50-ms")
	b.ReportMetric(ms(percentile(cold, 99)), "cold-p99-ms")
	b.ReportMetric(ms(percentile(base, 50)), "spawn-p50-ms")
	b.ReportMetric(ms(percentile(base, 99)), "spawn-p99-ms")
	b.ReportMetric(ms(percentile(cold, 50)-percentile(base, 50)), "added-p50-ms")
	b.ReportMetric(ms(percentile(cold, 99)-percentile(base, 99)), "added-p99-ms")
}

// BenchmarkWarm compares warm requests through the tunnel and proxy with the
// same backend reached directly: requests per second and latency
// percentiles, 8 concurrent keep-alive clients each way.
func BenchmarkWarm(b *testing.B) {
	h := newHarness(b)
	h.launch("hello", "")
	c := h.dial(h.peer("personal", "laptop"))
	var backend netip.AddrPort
	for _, m := range h.machines("hello") {
		if m.State == store.MachineStarted {
			a, err := h.g.drivers[m.Driver].Backend(m.ID, 80)
			if err == nil {
				backend = a
				break
			}
		}
	}
	if !backend.IsValid() {
		b.Fatal("no started machine")
	}
	run := func(name string, client *http.Client, url string) {
		b.Run(name, func(b *testing.B) {
			const workers = 8
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			next := make(chan struct{}, b.N)
			for i := 0; i < b.N; i++ {
				next <- struct{}{}
			}
			close(next)
			t0 := time.Now()
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						s := time.Now()
						resp, err := client.Get(url)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						d := time.Since(s)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			el := time.Since(t0)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(b.N)/el.Seconds(), "req/s")
			b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
		})
	}
	tr := c.HTTPClient()
	tr.Transport.(*http.Transport).MaxIdleConnsPerHost = 16
	run("tunnel+proxy", tr, "http://hello.flycast/")
	run("direct", &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}, "http://"+backend.String()+"/")
}
