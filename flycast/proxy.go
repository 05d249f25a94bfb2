package flycast

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/store"
)

var _ netstack.Router = (*Proxy)(nil)

// maxFlows bounds the client connections the proxy serves at once (raw
// splices, http connections and direct 6PN connections together): peers
// can open connections far faster than machines can serve them. Beyond it a
// SYN is answered with a RST.
const maxFlows = 16384

// Proxy is the Flycast proxy. Create it with New, feed it state with Update,
// run it with Start and end it with Close.
type Proxy struct {
	cfg Config
	met *metrics

	// view is what the packet path reads, without locks.
	view atomic.Pointer[view]

	mu        sync.Mutex
	machines  map[string]*machineState   // by ID
	byApp     map[string][]*machineState // sorted by ID
	apps      map[string]*App
	appStates map[string]*appState
	started   bool
	closed    bool

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// handlers counts http handlers running (added under mu while open).
	handlers sync.WaitGroup

	flows     atomic.Int64
	direct    *directHandler
	httpSrv   *http.Server
	httpLn    *connListener
	httpConns map[*httpConn]struct{} // on the fast path, closed by Close
	transport *http.Transport
	rp        *httputil.ReverseProxy
	reqIDs    requestIDs
}

// view is an immutable routing table built by Update.
type view struct {
	snap   *store.Snapshot
	routes map[string][]*portHandler // by app
	byAddr map[netip.Addr]*machineState
}

// New checks cfg and returns a proxy. It starts no goroutines.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("flycast: Config.Store is required")
	}
	if len(cfg.Drivers) == 0 {
		return nil, fmt.Errorf("flycast: Config.Drivers is empty; configure at least the process driver")
	}
	cfg.setDefaults()
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("flycast: register metrics: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		cfg:       cfg,
		met:       met,
		machines:  make(map[string]*machineState),
		byApp:     make(map[string][]*machineState),
		apps:      make(map[string]*App),
		appStates: make(map[string]*appState),
		ctx:       ctx,
		cancel:    cancel,
		reqIDs:    newRequestIDs(),
	}
	p.direct = &directHandler{p: p}
	p.view.Store(&view{snap: store.Empty()})
	p.initHTTP()
	return p, nil
}

// Start runs the auto-stop loop, consumes every driver's Exits and serves
// http connections. Connections routed before Start are refused.
func (p *Proxy) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.started {
		return nil
	}
	p.started = true
	for name, d := range p.cfg.Drivers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.consumeExits(name, d)
		}()
	}
	p.wg.Add(3)
	go func() {
		defer p.wg.Done()
		p.autoStopLoop()
	}()
	go func() {
		defer p.wg.Done()
		// Serve returns when httpLn is closed by Close.
		if err := p.httpSrv.Serve(p.httpLn); err != nil && err != http.ErrServerClosed {
			p.cfg.Logf("flycast: http server: %v", err)
		}
	}()
	go func() {
		defer p.wg.Done()
		select {
		case <-ctx.Done():
			p.cancel()
		case <-p.ctx.Done():
		}
	}()
	return nil
}

// Close stops the proxy's loops and open connections and waits for its
// goroutines. It does not stop machines: the caller decides. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for _, ms := range p.machines {
		ms.closeConnsLocked()
	}
	for hc := range p.httpConns {
		hc.closeLocked()
	}
	p.mu.Unlock()
	p.cancel()
	p.httpLn.Close()
	// Close (not Shutdown): in-flight requests end now, like spliced conns.
	err := p.httpSrv.Close()
	p.wg.Wait()
	p.handlers.Wait()
	p.transport.CloseIdleConnections()
	return err
}

// running reports whether connections may be served now.
func (p *Proxy) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started && !p.closed
}

// Update installs new state. It keeps each machine's runtime state across
// updates and forgets machines that are gone from snap.
func (p *Proxy) Update(snap *store.Snapshot, apps map[string]*App) {
	if snap == nil {
		snap = store.Empty()
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[string]bool, len(snap.Machines))
	byApp := make(map[string][]*machineState)
	byAddr := make(map[netip.Addr]*machineState, len(snap.Machines))
	for _, m := range snap.Machines {
		seen[m.ID] = true
		ms := p.machines[m.ID]
		if ms == nil {
			ms = &machineState{id: m.ID}
			ms.lastActive.Store(now.UnixNano())
			ms.rec = m
			p.machines[m.ID] = ms
		} else if !m.UpdatedAt.Before(ms.rec.UpdatedAt) {
			// A snapshot older than our own last transition is stale.
			ms.rec = m
		}
		ms.setStartedFlag()
		byApp[m.App] = append(byApp[m.App], ms)
		if m.Address.IsValid() {
			byAddr[m.Address] = ms
		}
	}
	for id, ms := range p.machines {
		if !seen[id] {
			ms.closeConnsLocked()
			delete(p.machines, id)
		}
	}
	p.byApp = byApp
	p.apps = make(map[string]*App, len(apps))
	routes := make(map[string][]*portHandler, len(apps))
	for name, a := range apps {
		if a == nil {
			continue
		}
		p.apps[name] = a
		routes[name] = buildRoutes(p, a)
	}
	for name := range p.appStates {
		if p.apps[name] == nil {
			delete(p.appStates, name)
		}
	}
	p.view.Store(&view{snap: snap, routes: routes, byAddr: byAddr})
	// New machines or limits may let waiters through.
	for name := range p.apps {
		p.serveQueueLocked(name)
	}
}

// RouteTCP implements netstack.Router. It only reads the current view.
func (p *Proxy) RouteTCP(src, dst netip.AddrPort) netstack.TCPHandler {
	v := p.view.Load()
	if ip, ok := v.snap.IP(dst.Addr()); ok {
		port := int(dst.Port())
		for _, h := range v.routes[ip.App] {
			if port >= h.start && port <= h.end {
				return h
			}
		}
		return nil
	}
	if ms := v.byAddr[dst.Addr()]; ms != nil && ms.started.Load() {
		return p.direct
	}
	return nil
}

// Exists implements netstack.Router.
func (p *Proxy) Exists(dst netip.Addr) bool { return p.view.Load().snap.Exists(dst) }

// driverOf returns the driver of a machine record.
func (p *Proxy) driverOf(m store.Machine) (machines.Driver, error) {
	d := p.cfg.Drivers[m.Driver]
	if d == nil {
		return nil, fmt.Errorf("machine %s: %w %q", m.ID, ErrNoDriver, m.Driver)
	}
	return d, nil
}

// admit reserves one flow slot; release with p.flows.Add(-1).
func (p *Proxy) admit() bool {
	if p.flows.Add(1) > maxFlows {
		p.flows.Add(-1)
		return false
	}
	return true
}
