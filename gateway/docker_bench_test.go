package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	devclient "github.com/devgate/devgate/client"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// BenchmarkDockerColdWake measures what the proxy adds to a cold wake of a
// container whose process listens at once. Each iteration does two wakes:
//   - base: `docker start` of a plain hello container plus a fast-retry
//     dial until it accepts (the engine's and the process's own time);
//   - wake: an HTTP request through WireGuard to the Flycast address of an
//     app whose machines are all stopped, answered by the woken container.
//
// Reported: medians and p99 of both, and overhead = wake - base (median and
// p99 of each series), over b.N iterations (run with -benchtime=30x or more).
func BenchmarkDockerColdWake(b *testing.B) {
	cli := dockerEngine(b)
	buildImages(b)
	netName := randName("devgate-bench-")
	b.Setenv(DockerNetworkEnv, netName)
	b.Cleanup(func() { removeScope(b, cli, netName) })
	dir := b.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	g, err := Start(ctx, Config{DataDir: dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{"127.0.0.1:9"},
		IdleTimeout: time.Hour, UAPIPath: filepath.Join(dir, "wg.sock")})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	ac := api.NewUnixClient(dir)
	text := appconfig.Generate(appconfig.LaunchOptions{App: "bench", PrimaryRegion: "local", Image: helloImage, InternalPort: 80, Flycast: true})
	if _, err := ac.CreateApp(ctx, api.CreateAppRequest{Name: "bench", Flycast: true, Config: text}); err != nil {
		b.Fatal(err)
	}
	if _, err := ac.Deploy(ctx, "bench", api.DeployRequest{Config: text}); err != nil {
		b.Fatal(err)
	}
	priv, _ := wgtypes.GeneratePrivateKey()
	res, err := ac.CreatePeer(ctx, api.CreatePeerRequest{Org: "personal", Name: "bench", PublicKey: priv.PublicKey().String()})
	if err != nil {
		b.Fatal(err)
	}
	gw, _ := wgtypes.ParseKey(res.GatewayPublicKey)
	c, err := devclient.New(peers.ClientConfig(priv, gw, res.Peer.Address, res.NetworkPrefix, fmt.Sprintf("127.0.0.1:%d", g.Port())), func(string, ...any) {})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stopAll := func() {
		ms, err := ac.ListMachines(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range ms {
			if m.State == store.MachineStarted {
				if err := ac.StopMachine(ctx, m.ID); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	request := func() {
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, "GET", "http://bench.flycast/", nil)
		req.Close = true
		resp, err := c.HTTPClient().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("cold request: %s", resp.Status)
		}
	}
	request() // warm the tunnel (handshake) and DNS path
	// The base container: same image, same network, no devgate labels.
	bc, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:           &container.Config{Image: helloImage, Env: []string{"PORT=80"}},
		HostConfig:       &container.HostConfig{NetworkMode: container.NetworkMode(netName)},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	base := func() time.Duration {
		t0 := time.Now()
		if _, err := cli.ContainerStart(ctx, bc.ID, client.ContainerStartOptions{}); err != nil {
			b.Fatal(err)
		}
		ins, err := cli.ContainerInspect(ctx, bc.ID, client.ContainerInspectOptions{})
		if err != nil {
			b.Fatal(err)
		}
		addr := netip.AddrPortFrom(ins.Container.NetworkSettings.Networks[netName].IPAddress, 80)
		for i := 0; ; i++ {
			conn, err := net.DialTimeout("tcp", addr.String(), time.Second)
			if err == nil {
				conn.Close()
				break
			}
			if i > 2000 {
				b.Fatalf("base container never listened: %v", err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := time.Since(t0)
		zero := 0
		if _, err := cli.ContainerStop(ctx, bc.ID, client.ContainerStopOptions{Timeout: &zero}); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var bases, wakes []time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		bases = append(bases, base())
		stopAll()
		b.StartTimer()
		t0 := time.Now()
		request()
		wakes = append(wakes, time.Since(t0))
	}
	b.StopTimer()
	stopAll()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	pct := func(xs []time.Duration, p float64) time.Duration {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))]
	}
	b.ReportMetric(ms(pct(bases, 0.5)), "base-p50-ms")
	b.ReportMetric(ms(pct(bases, 0.99)), "base-p99-ms")
	b.ReportMetric(ms(pct(wakes, 0.5)), "wake-p50-ms")
	b.ReportMetric(ms(pct(wakes, 0.99)), "wake-p99-ms")
	b.ReportMetric(ms(pct(wakes, 0.5)-pct(bases, 0.5)), "overhead-p50-ms")
	b.ReportMetric(ms(pct(wakes, 0.99)-pct(bases, 0.99)), "overhead-p99-ms")
}
