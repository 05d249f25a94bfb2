package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/gateway"
	"github.com/devgate/devgate/store"
	"github.com/devgate/devgate/tunnel"
	mdns "github.com/miekg/dns"
)

// demoIdle is the demo's idle period: short, so the walkthrough shows
// machines falling asleep within seconds (Fly's is a few minutes).
const demoIdle = 4 * time.Second

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "demo")
	port := fs.Int("listen-port", gateway.DefaultListenPort, "WireGuard UDP port (0, or a port that is taken, picks a free one)")
	once := fs.Bool("once", false, "exit after the walkthrough instead of serving until Ctrl-C")
	verbose := fs.Bool("v", false, "log the gateway's diagnostics")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "devgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	say := func(format string, a ...any) { fmt.Fprintf(e.stdout, format+"\n", a...) }
	logf := func(string, ...any) {}
	if *verbose {
		logf = log.New(e.stderr, "gateway: ", log.Lmicroseconds).Printf
	}

	say("==> Starting a gateway (embedded state in %s, no root)", dir)
	cfg := gateway.Config{DataDir: dir, ListenPort: *port, RandomPort: *port == 0, IdleTimeout: demoIdle, UAPIPath: filepath.Join(dir, "devgate0.sock"), Version: version, Logf: logf}
	g, err := gateway.Start(ctx, cfg)
	if errors.Is(err, tunnel.ErrPortInUse) {
		cfg.ListenPort, cfg.RandomPort = 0, true
		g, err = gateway.Start(ctx, cfg)
	}
	if err != nil {
		return err
	}
	defer g.Close()
	local := fmt.Sprintf("127.0.0.1:%d", g.Port())
	say("    WireGuard on UDP %d, public key %s", g.Port(), g.PublicKey())
	c := api.NewUnixClient(dir)

	say("\n==> devgate launch --name hello --command \"devgate hello\" --flycast --internal-port 80 --no-deploy")
	text := appconfig.Generate(appconfig.LaunchOptions{App: "hello", PrimaryRegion: "local", Command: "devgate hello", InternalPort: 80, Flycast: true})
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{Name: "hello", Flycast: true, Config: text}); err != nil {
		return err
	}
	say("\n==> devgate deploy")
	t0 := time.Now()
	res, err := c.Deploy(ctx, "hello", api.DeployRequest{Config: text})
	if err != nil {
		return err
	}
	for _, m := range res.Machines {
		say("    Machine %s %s (6PN %s)", m.ID, m.State, m.Address)
	}
	say("    deployed in %s", time.Since(t0).Round(time.Millisecond))

	say("\n==> devgate ips list -a hello")
	say("    VERSION  IP                         TYPE     REGION")
	for _, ip := range res.IPs {
		say("    v6       %-26s private  %s", ip.Address, ip.Region)
	}

	say("\n==> devgate wireguard create personal local demo (the key pair is made here; only the public key is sent)")
	peerCfg, err := createPeer(ctx, c, api.CreatePeerRequest{Org: store.DefaultOrg, Region: "local", Name: "demo"})
	if err != nil {
		return err
	}
	peerCfg.Peers[0].Endpoint = local
	wg, err := client.New(peerCfg, nil)
	if err != nil {
		return err
	}
	defer wg.Close()
	say("    userspace WireGuard client up as %s, DNS %s", wg.Addr(), peerCfg.Interface.DNS[0])

	say("\n==> dig hello.flycast AAAA (through the tunnel)")
	addr, err := demoLookup(ctx, wg, "hello.flycast.")
	if err != nil {
		return err
	}
	say("    hello.flycast.  60  IN  AAAA  %s", addr)

	say("\n==> ping -c2 hello.flycast")
	for i := 0; i < 2; i++ {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		rtt, err := wg.Ping(pctx, addr)
		cancel()
		if err != nil {
			return fmt.Errorf("ping %s: %w", addr, err)
		}
		say("    reply from %s: icmp_seq=%d time=%.3f ms", addr, i+1, float64(rtt.Microseconds())/1000)
	}

	say("\n==> curl http://hello.flycast (warm: machines are up after deploy)")
	hc := wg.HTTPClient()
	if err := demoGet(ctx, e, hc, true); err != nil {
		return err
	}

	say("\n==> waiting for the machines to fall asleep (idle timeout %s)", demoIdle)
	if err := waitAllStopped(ctx, c, "hello", 3*demoIdle+30*time.Second); err != nil {
		return err
	}
	say("    every machine of hello is stopped")

	say("\n==> time curl http://hello.flycast (cold: this request wakes a machine)")
	if err := demoGet(ctx, e, hc, false); err != nil {
		return err
	}
	say("\n==> time curl http://hello.flycast (warm)")
	if err := demoGet(ctx, e, hc, false); err != nil {
		return err
	}

	say("\n==> waiting for it to spin back down")
	if err := waitAllStopped(ctx, c, "hello", 3*demoIdle+30*time.Second); err != nil {
		return err
	}
	say("    asleep again")

	if *once {
		return nil
	}
	laptop, err := createPeer(ctx, c, api.CreatePeerRequest{Org: store.DefaultOrg, Region: "local", Name: "laptop"})
	if err != nil {
		return err
	}
	say("\n==> A config for a real WireGuard client (wg-quick or the WireGuard app). Its Endpoint is %s;", g.Endpoint())
	say("    reachable from other machines if UDP %d is. Save it as laptop.conf and: sudo wg-quick up ./laptop.conf", g.Port())
	fmt.Fprintf(e.stdout, "\n%s\n", laptop.Render())
	say("Serving until Ctrl-C. Then: curl http://hello.flycast")
	select {
	case <-ctx.Done():
		return nil
	case err := <-g.Done():
		return err
	}
}

func demoLookup(ctx context.Context, wg *client.Client, name string) (netip.Addr, error) {
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeAAAA)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := wg.Exchange(qctx, q)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("dig %s: %w", name, err)
	}
	for _, rr := range r.Answer {
		if aaaa, ok := rr.(*mdns.AAAA); ok {
			a, _ := netip.AddrFromSlice(aaaa.AAAA)
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("dig %s: no AAAA answer (%s)", name, mdns.RcodeToString[r.Rcode])
}

func demoGet(ctx context.Context, e *env, hc *http.Client, showBody bool) error {
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, "GET", "http://hello.flycast/", nil)
	t0 := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET http://hello.flycast/: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET http://hello.flycast/: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if showBody {
		for _, line := range strings.Split(string(body), "\n") {
			if l := strings.TrimSpace(line); strings.Contains(l, "Server") || strings.Contains(l, "Machine") || strings.Contains(l, "<title>") {
				fmt.Fprintf(e.stdout, "    %s\n", stripTags(l))
			}
		}
	}
	fmt.Fprintf(e.stdout, "    %s, %d bytes, from machine %s\n    real %.3fs\n", resp.Status, len(body), answeredBy(string(body)), d.Seconds())
	return nil
}

// answeredBy reads the machine from the hello page's title.
func answeredBy(page string) string {
	_, rest, ok := strings.Cut(page, "<title>Hello from ")
	if !ok {
		return "?"
	}
	id, _, _ := strings.Cut(rest, "<")
	return id
}

func stripTags(s string) string {
	var b strings.Builder
	in := false
	for _, r := range s {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
			b.WriteByte(' ')
		case !in:
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

func waitAllStopped(ctx context.Context, c *api.Client, app string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		ms, err := c.ListMachines(ctx, app)
		if err != nil {
			return err
		}
		up := 0
		for _, m := range ms {
			if m.State != store.MachineStopped && m.State != store.MachineFailed {
				up++
			}
		}
		if up == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("machines of %s still running after %s; is something holding a connection open?", app, limit)
}
