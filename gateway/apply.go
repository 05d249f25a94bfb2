package gateway

import (
	"bytes"
	"net/netip"
	"os"
	"sync"

	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/flycast"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	"github.com/devgate/devgate/tunnel"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// dnsPort is where each network's resolver listens, on <prefix>::3.
const dnsPort = 53

// apply pushes one snapshot to the data plane. It runs on the watch
// goroutine only, so its steps never race with each other.
func (g *Gateway) apply(snap *store.Snapshot) {
	g.snap.Store(snap)
	if err := g.tun.SetPeers(tunnelPeers(snap, g.logf)); err != nil {
		g.logf("update WireGuard peers: %v", err)
	}
	g.resolver.sync(g, snap)
	g.proxy.Update(snap, g.apps.convert(snap, g.logf))
	g.changedMu.Lock()
	close(g.changed)
	g.changed = make(chan struct{})
	g.changedMu.Unlock()
	select {
	case <-g.ready:
	default:
		close(g.ready)
	}
}

// tunnelPeers is every peer with the /120 the gateway routes to it.
func tunnelPeers(snap *store.Snapshot, logf func(string, ...any)) []tunnel.Peer {
	out := make([]tunnel.Peer, 0, len(snap.Peers))
	for _, p := range snap.Peers {
		k, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			logf("peer %s/%s has an unreadable public key; skipping it: %v", p.Org, p.Name, err)
			continue
		}
		out = append(out, tunnel.Peer{PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(p.Address, peers.PeerPrefixLen).Masked()}})
	}
	return out
}

// resolvers tracks which networks have a DNS server listening on their
// <prefix>::3. Networks are never removed, so neither are listeners.
type resolvers struct {
	byNet map[store.NetworkKey]bool
}

func (r *resolvers) sync(g *Gateway, snap *store.Snapshot) {
	for k, n := range snap.Networks {
		if r.byNet[k] {
			continue
		}
		addr := netip.AddrPortFrom(peers.Resolver(n.Prefix), dnsPort)
		pc, err := g.stack.ListenUDP(addr)
		if err != nil {
			g.logf("DNS for network %s/%s on %s: %v", k.Org, k.Network, addr, err)
			continue
		}
		l, err := g.stack.ListenTCP(addr)
		if err != nil {
			pc.Close()
			g.logf("DNS (TCP) for network %s/%s on %s: %v", k.Org, k.Network, addr, err)
			continue
		}
		r.byNet[k] = true
		g.serve("DNS "+addr.String(), func() error { return g.dns.ServePacket(pc) })
		g.serve("DNS (TCP) "+addr.String(), func() error { return g.dns.Serve(l) })
		g.serveTunnelAPI(k, n.Prefix)
	}
}

// appCache converts fly.toml into the proxy's App, re-parsing only configs
// that changed since the last snapshot.
type appCache struct {
	mu   sync.Mutex
	byID map[string]cachedApp
}

type cachedApp struct {
	config []byte
	app    store.App
	out    *flycast.App
}

func (c *appCache) convert(snap *store.Snapshot, logf func(string, ...any)) map[string]*flycast.App {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[string]cachedApp, len(snap.Apps))
	out := make(map[string]*flycast.App, len(snap.Apps))
	for name, a := range snap.Apps {
		if old, ok := c.byID[name]; ok && bytes.Equal(old.config, a.Config) && old.app.Org == a.Org && old.app.Network == a.Network {
			next[name], out[name] = old, old.out
			continue
		}
		fa, err := ProxyApp(a)
		if err != nil {
			// A config that was accepted at deploy cannot fail here unless
			// the parser changed; serve nothing rather than guess.
			logf("app %s: %v; its services are off until it is deployed again", name, err)
			fa = &flycast.App{Name: a.Name, Org: a.Org, Network: a.Network}
		}
		next[name] = cachedApp{config: a.Config, app: a, out: fa}
		out[name] = fa
	}
	c.byID = next
	return out
}

// ProxyApp converts an app's fly.toml into the proxy's view.
func ProxyApp(a store.App) (*flycast.App, error) {
	fa := &flycast.App{Name: a.Name, Org: a.Org, Network: a.Network}
	if len(a.Config) == 0 {
		return fa, nil
	}
	cfg, _, err := appconfig.Parse("fly.toml", a.Config)
	if err != nil {
		return fa, err
	}
	svcs := cfg.Services()
	fa.AutoStart = true
	fa.AutoStop = "off"
	for i, s := range svcs {
		if s.Protocol != "" && s.Protocol != "tcp" {
			continue // Flycast carries TCP; UDP services are not proxied
		}
		fs := flycast.Service{
			InternalPort: s.InternalPort,
			ProxyProto:   s.ProxyProto,
			Concurrency:  flycast.Concurrency{Type: s.Concurrency.Type, Soft: s.Concurrency.Soft, Hard: s.Concurrency.Hard},
		}
		for _, p := range s.Ports {
			fs.Ports = append(fs.Ports, flycast.Port{Start: p.Start, End: p.End, Handlers: p.Handlers, ForceHTTPS: p.ForceHTTPS})
			if p.ProxyProto != "" && fs.ProxyProto == "" {
				fs.ProxyProto = p.ProxyProto
			}
		}
		fa.Services = append(fa.Services, fs)
		// Fly sets these per service; the proxy keeps one per app, taken
		// from the first service, which is [http_service] when present.
		if i == 0 {
			fa.AutoStop, fa.AutoStart, fa.MinRunning = s.AutoStop, s.AutoStart, s.MinRunning
		}
	}
	fa.IdleTimeout = cfg.IdleTimeout()
	fa.Machine = flycast.MachineTemplate{
		Command:     resolveSelf(cfg.Command("app")),
		Image:       cfg.Build.Image,
		Env:         cfg.Env,
		KillSignal:  cfg.KillSignalValue(),
		KillTimeout: cfg.KillTimeoutValue(),
	}
	return fa, nil
}

// resolveSelf runs `devgate ...` commands with this very binary, so the demo
// works from `go run` and an installed binary alike, with no PATH set-up.
func resolveSelf(argv []string) []string {
	if len(argv) == 0 || argv[0] != "devgate" {
		return argv
	}
	exe, err := os.Executable()
	if err != nil {
		return argv
	}
	return append([]string{exe}, argv[1:]...)
}
