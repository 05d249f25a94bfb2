package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/devgate/devgate/gateway"
)

func runServe(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "serve")
	var (
		port     = fs.Int("listen-port", gateway.DefaultListenPort, "WireGuard UDP port")
		endpoint = fs.String("endpoint", "", "HOST:PORT written into peers' configs (default: this host's address and the listen port)")
		region   = fs.String("region", "local", "this gateway's region")
		natsURL  = fs.String("nats-url", "", "an external NATS server for shared state (default: embedded, in the data dir)")
		upstream = fs.String("upstream-dns", "", "comma-separated resolvers (host:port) for public names (default: /etc/resolv.conf)")
		idle     = fs.Duration("idle-timeout", 0, "how long a machine may be idle before it is stopped, e.g. 5s or 5m (default 5m)")
		metrics  = fs.String("metrics-addr", "", "serve Prometheus /metrics on this TCP address")
		iface    = fs.String("wg-interface", "devgate0", "name of the UAPI socket, for `wg show NAME` (in /var/run/wireguard when root, else in the data dir)")
		gcPct    = fs.Int("gc-percent", 50, "heap growth over live memory, in percent, before the garbage collector runs (0: Go's default, 100; GOGC overrides)")
	)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *port < 1 || *port > 65535 {
		return fmt.Errorf("--listen-port %d is not a port; use 1..65535", *port)
	}
	if *gcPct < 0 || *gcPct > 10000 {
		return fmt.Errorf("--gc-percent %d is out of range; use 0 (Go's default) up to 10000", *gcPct)
	}
	setGCPercent(*gcPct)
	var ups []string
	if *upstream != "" {
		for _, u := range strings.Split(*upstream, ",") {
			u = strings.TrimSpace(u)
			if !strings.Contains(u, ":") || strings.Count(u, ":") > 1 && !strings.Contains(u, "]:") {
				u += ":53"
				if strings.Count(u, ":") > 2 {
					u = "[" + strings.TrimSuffix(u, ":53") + "]:53"
				}
			}
			ups = append(ups, u)
		}
	}
	logger := log.New(e.stderr, "", log.LstdFlags)
	cfg := gateway.Config{
		DataDir: e.dataDir, ListenPort: *port, Endpoint: *endpoint, Region: *region, NATSURL: *natsURL,
		UpstreamDNS: ups, IdleTimeout: *idle, MetricsAddr: *metrics, APIAddr: e.apiAddr, APIToken: e.apiToken,
		UAPIPath: uapiPath(e.dataDir, *iface), Version: version, Logf: logger.Printf,
	}
	g, err := gateway.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "devgate %s serving\n  WireGuard: UDP %d, public key %s\n  Endpoint:  %s (written into configs; change with --endpoint)\n  Data dir:  %s\n  UAPI:      %s\n",
		version, g.Port(), g.PublicKey(), g.Endpoint(), e.dataDir, cfg.UAPIPath)
	fmt.Fprintf(e.stdout, "Next: devgate wireguard create %s %s laptop laptop.conf\n", "personal", *region)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-g.Done():
	}
	fmt.Fprintln(e.stdout, "devgate: shutting down")
	done := make(chan error, 1)
	go func() { done <- g.Close() }()
	select {
	case err := <-done:
		if runErr == nil {
			runErr = err
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("shutdown took longer than 30s; some machines may still be stopping")
	}
	return runErr
}

// uapiPath puts the UAPI socket where `wg show` looks when we may write
// there (root), and in the data dir otherwise.
func uapiPath(dataDir, iface string) string {
	if os.Geteuid() == 0 {
		dir := "/var/run/wireguard"
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return filepath.Join(dir, iface+".sock")
		}
	}
	return filepath.Join(dataDir, iface+".sock")
}
