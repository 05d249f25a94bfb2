// Package gateway assembles a running devgate: the state store, the
// WireGuard tunnel, the netstack, private DNS, the Flycast proxy, machine
// drivers, the control API and metrics. It owns their lifecycle (start in
// dependency order, stop in reverse) and the watch loop that pushes every
// state change to the data plane, so no change ever needs a restart.
//
// It is the only package that knows all the others. The CLI (cmd/devgate)
// calls it; data-plane packages must never import it.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/dns"
	"github.com/devgate/devgate/flycast"
	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/store"
	"github.com/devgate/devgate/tunnel"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Config configures a gateway. Zero values take the documented defaults.
type Config struct {
	// DataDir holds the state (embedded NATS), the gateway key, the API
	// socket and machine logs. Created 0700 if missing.
	DataDir string
	// ListenPort is the WireGuard UDP port (default 51820; 0 in tests picks
	// a free one only when RandomPort is set).
	ListenPort int
	RandomPort bool
	// Endpoint is the HOST:PORT written into peers' configs. Default: this
	// host's first non-loopback address and the listen port.
	Endpoint string
	// Region is this gateway's region (default "local").
	Region string
	// NATSURL points at an external NATS; "" embeds one in DataDir.
	NATSURL string
	// UpstreamDNS are resolvers for public names; nil reads /etc/resolv.conf.
	UpstreamDNS []string
	// IdleTimeout is how long a machine may be idle before auto-stop; apps
	// may set their own in fly.toml ([devgate] idle_timeout).
	IdleTimeout time.Duration
	// WakeTimeout bounds one machine wake (start plus readiness) and
	// QueueTimeout one wait for a machine below its hard_limit; zero takes
	// flycast's defaults (60s, 10s). Tests shorten them.
	WakeTimeout, QueueTimeout time.Duration
	// MetricsAddr serves Prometheus /metrics when set.
	MetricsAddr string
	// APIAddr serves the control API on TCP (bearer token) when set.
	APIAddr  string
	APIToken string
	// UAPIPath is where `wg show` finds the device; "" means
	// DataDir/devgate0.sock.
	UAPIPath string
	// Version is reported by the API.
	Version string
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// DefaultListenPort is WireGuard's customary port, as flyctl's gateways use.
const DefaultListenPort = 51820

// Gateway is a running devgate.
type Gateway struct {
	cfg     Config
	logf    func(string, ...any)
	key     wgtypes.Key
	store   *store.Store
	nc      *nats.Conn
	nats    *store.Embedded
	lock    *os.File
	stack   *netstack.Stack
	tun     *tunnel.Tunnel
	dns     *dns.Server
	proxy   *flycast.Proxy
	drivers map[string]machines.Driver
	api     *api.Server
	metrics *http.Server
	reg     *prometheus.Registry

	snap      atomic.Pointer[store.Snapshot]
	changedMu sync.Mutex
	changed   chan struct{} // closed and replaced after every apply
	ready     chan struct{} // closed after the first snapshot is applied
	apps      appCache
	resolver  resolvers
	tapi      tunnelAPI // per-network API on <prefix>::3:4280 (tunnelapi.go)

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closers []func() error // in start order; Close runs them in reverse
	once    sync.Once
	errc    chan error // fatal errors from background loops
}

// Start brings a gateway up and returns once it serves: peers, names and
// apps from the store are live. On error everything already started is
// stopped again.
func Start(ctx context.Context, cfg Config) (_ *Gateway, err error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Region == "" {
		cfg.Region = "local"
	}
	if cfg.ListenPort == 0 && !cfg.RandomPort {
		cfg.ListenPort = DefaultListenPort
	}
	if cfg.UAPIPath == "" {
		cfg.UAPIPath = filepath.Join(cfg.DataDir, "devgate0.sock")
	}
	g := &Gateway{cfg: cfg, logf: cfg.Logf, ready: make(chan struct{}), errc: make(chan error, 1), changed: make(chan struct{})}
	g.snap.Store(store.Empty())
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	bg, cancel := context.WithCancel(context.Background())
	g.cancel = cancel

	if err := g.openDataDir(); err != nil {
		return nil, err
	}
	if err := g.openStore(ctx); err != nil {
		return nil, err
	}
	if _, err := g.store.EnsureOrg(ctx, store.DefaultOrg); err != nil {
		return nil, fmt.Errorf("create organization %q: %w", store.DefaultOrg, err)
	}
	g.key, err = tunnel.LoadOrCreateKey(filepath.Join(cfg.DataDir, "gateway.key"))
	if err != nil {
		return nil, err
	}
	g.reg = prometheus.NewRegistry()
	g.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := g.startMachines(ctx); err != nil {
		return nil, err
	}
	// The docker driver joins when an engine answers; without one it logs
	// a line and apps that need it get a clear error at deploy.
	if err := g.startDocker(ctx); err != nil {
		return nil, err
	}
	if err := g.startDataPlane(bg); err != nil {
		return nil, err
	}
	if cfg.Endpoint == "" {
		g.cfg.Endpoint = net.JoinHostPort(defaultHost(), fmt.Sprint(g.tun.Port()))
	}
	// The watch loop pushes every change to the data plane. Wait for the
	// first snapshot so that Start returns a gateway that already knows its
	// peers and apps.
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.store.Watch(bg, g.apply); err != nil && bg.Err() == nil {
			g.logf("state watch ended: %v", err)
			g.fail(fmt.Errorf("state watch: %w", err))
		}
	}()
	select {
	case <-g.ready:
	case err := <-g.errc:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := g.startAPI(); err != nil {
		return nil, err
	}
	if err := g.startMetrics(); err != nil {
		return nil, err
	}
	return g, nil
}

// openDataDir creates the data dir (0700) and takes an exclusive lock on it,
// so two gateways never share one embedded store.
func (g *Gateway) openDataDir() error {
	dir := g.cfg.DataDir
	if dir == "" {
		return errors.New("no data dir; pass --data-dir or set DEVGATE_DATA_DIR")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s is not a directory; pass another --data-dir", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// The API socket's mode is its access control; a group- or
		// world-readable data dir would also expose the gateway key's name.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("data dir %s is readable by others and cannot be made private: %w", dir, err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("another devgate is already running with data dir %s; stop it, or pass another --data-dir", dir)
	}
	g.lock = f
	g.closers = append(g.closers, f.Close)
	return nil
}

func (g *Gateway) openStore(ctx context.Context) error {
	var err error
	if g.cfg.NATSURL == "" {
		g.nats, err = store.StartEmbedded(g.cfg.DataDir, g.logf)
		if err != nil {
			return err
		}
		g.closers = append(g.closers, func() error { g.nats.Shutdown(); return nil })
		g.nc, err = g.nats.Conn()
	} else {
		g.nc, err = store.Connect(g.cfg.NATSURL)
	}
	if err != nil {
		return err
	}
	g.closers = append(g.closers, func() error { g.nc.Close(); return nil })
	g.store, err = store.Open(ctx, g.nc, store.Options{Logf: g.logf})
	return err
}

// startMachines starts the drivers and records that machines which were
// running when the gateway last stopped are stopped now: their processes died
// with it (Pdeathsig), and orphans left by a crash are killed here.
func (g *Gateway) startMachines(ctx context.Context) error {
	pd, err := machines.NewProcessDriver(machines.ProcessConfig{StateDir: filepath.Join(g.cfg.DataDir, "machines"), Logf: g.logf})
	if err != nil {
		return err
	}
	g.drivers = map[string]machines.Driver{pd.Name(): pd}
	g.closers = append(g.closers, pd.Close)
	if ids, err := pd.CleanupOrphans(); err != nil {
		g.logf("clean up machine processes left from a previous run: %v", err)
	} else if len(ids) > 0 {
		g.logf("stopped %d machine processes left from a previous run", len(ids))
	}
	ms, err := g.store.ListMachines(ctx, "")
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Driver != pd.Name() || (m.State != store.MachineStarted && m.State != store.MachineStarting && m.State != store.MachineStopping) {
			continue
		}
		if _, err := g.store.UpdateMachine(ctx, m.ID, func(m *store.Machine) error {
			m.State, m.Reason = store.MachineStopped, "gateway restarted"
			return nil
		}); err != nil {
			return fmt.Errorf("record machine %s as stopped: %w", m.ID, err)
		}
	}
	return nil
}

func (g *Gateway) startDataPlane(ctx context.Context) error {
	logDir := filepath.Join(g.cfg.DataDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return fmt.Errorf("machine log dir: %w", err)
	}
	var err error
	g.proxy, err = flycast.New(flycast.Config{
		Region:      g.cfg.Region,
		Drivers:     g.drivers,
		Store:       g.store,
		IdleTimeout: g.cfg.IdleTimeout,
		WakeTimeout: g.cfg.WakeTimeout, QueueTimeout: g.cfg.QueueTimeout,
		LogDir:     logDir,
		Registerer: g.reg,
		Logf:       g.logf,
	})
	if err != nil {
		return err
	}
	if err := g.proxy.Start(ctx); err != nil {
		return err
	}
	g.closers = append(g.closers, g.proxy.Close)
	g.stack, err = netstack.New(netstack.Config{Router: g.proxy, Logf: g.logf})
	if err != nil {
		return err
	}
	g.closers = append(g.closers, g.stack.Close)
	upstreams := g.cfg.UpstreamDNS
	if upstreams == nil {
		upstreams, err = dns.UpstreamsFromResolvConf("/etc/resolv.conf")
		if err != nil {
			g.logf("no upstream DNS (%v): public names will fail; pass --upstream-dns", err)
		}
	}
	g.dns = dns.New(dns.Config{
		Snapshot:  g.snap.Load,
		Region:    g.cfg.Region,
		Upstreams: upstreams,
		Observe:   g.observeDNS(),
		Logf:      g.logf,
	})
	g.closers = append(g.closers, g.dns.Close)
	g.closers = append(g.closers, g.tapi.close)
	g.resolver = resolvers{byNet: map[store.NetworkKey]bool{}}
	g.tun, err = tunnel.New(tunnel.Config{
		PrivateKey: g.key,
		ListenPort: g.cfg.ListenPort,
		TUN:        g.stack.TUN(),
		UAPIPath:   g.cfg.UAPIPath,
		Logf:       g.logf,
	})
	if err != nil {
		return err
	}
	g.closers = append(g.closers, g.tun.Close)
	g.registerDataPlaneMetrics()
	return nil
}

func (g *Gateway) startAPI() error {
	g.api = api.NewServer(g.store, control{g}, g.cfg.APIToken, g.logf)
	g.closers = append(g.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return g.api.Close(ctx)
	})
	sock := filepath.Join(g.cfg.DataDir, api.SocketName)
	// A socket left by a gateway that was killed is stale: the data-dir lock
	// proves no other gateway owns it.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale API socket %s: %w", sock, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("API socket %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("API socket %s: %w", sock, err)
	}
	g.serve("API", func() error { return g.api.Serve(l) })
	if g.cfg.APIAddr != "" {
		if g.cfg.APIToken == "" {
			return errors.New("--api-addr needs a token: pass --api-token or set DEVGATE_API_TOKEN")
		}
		tl, err := net.Listen("tcp", g.cfg.APIAddr)
		if err != nil {
			return fmt.Errorf("API address %s: %w; choose another with --api-addr", g.cfg.APIAddr, err)
		}
		g.serve("API (TCP)", func() error { return g.api.ServeTCP(tl) })
	}
	return nil
}

func (g *Gateway) startMetrics() error {
	if g.cfg.MetricsAddr == "" {
		return nil
	}
	l, err := net.Listen("tcp", g.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics address %s: %w; choose another with --metrics-addr", g.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{}))
	g.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	g.closers = append(g.closers, g.metrics.Close)
	g.serve("metrics", func() error { return g.metrics.Serve(l) })
	return nil
}

// serve runs a server loop owned by the gateway; an unexpected end is fatal.
func (g *Gateway) serve(what string, fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, dns.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			g.logf("%s server: %v", what, err)
			g.fail(fmt.Errorf("%s server: %w", what, err))
		}
	}()
}

func (g *Gateway) fail(err error) {
	select {
	case g.errc <- err:
	default:
	}
}

// Done delivers the first fatal error of a background loop.
func (g *Gateway) Done() <-chan error { return g.errc }

// Endpoint is the HOST:PORT peers' configs name.
func (g *Gateway) Endpoint() string { return g.cfg.Endpoint }

// Port is the WireGuard UDP port.
func (g *Gateway) Port() int { return g.tun.Port() }

// PublicKey is the gateway's WireGuard public key.
func (g *Gateway) PublicKey() wgtypes.Key { return g.key.PublicKey() }

// Snapshot is the state the data plane currently serves.
func (g *Gateway) Snapshot() *store.Snapshot { return g.snap.Load() }

// Store is the state store.
func (g *Gateway) Store() *store.Store { return g.store }

// NetstackStats are the netstack's counters.
func (g *Gateway) NetstackStats() netstack.Stats { return g.stack.Stats() }

// Close stops everything in reverse start order. Process machines stop with
// it (a restart records them stopped); containers are left as they are, and
// a restart adopts them again. Idempotent.
func (g *Gateway) Close() error {
	var errs []error
	g.once.Do(func() {
		if g.cancel != nil {
			g.cancel()
		}
		for i := len(g.closers) - 1; i >= 0; i-- {
			if err := g.closers[i](); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		g.wg.Wait()
	})
	return errors.Join(errs...)
}

// defaultHost is the address written into configs when --endpoint is not
// given: the first global unicast address of this host, else loopback.
func defaultHost() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
