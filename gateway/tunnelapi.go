package gateway

import (
	"context"
	"errors"
	"log"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
)

// TunnelAPIPort is where each network's API listens on <prefix>::3, reached
// by peers as _api.internal, as on Fly.
const TunnelAPIPort = 4280

// Bounds a peer can push on; a laptop is trusted less than the host's CLI.
const (
	// tunnelAPIHeaderTimeout cuts a peer that trickles its request headers.
	tunnelAPIHeaderTimeout = 10 * time.Second
	// tunnelAPIIdleTimeout closes a kept-alive connection with no request.
	tunnelAPIIdleTimeout = 60 * time.Second
	// tunnelAPIMaxHeaderBytes bounds request headers; the API takes no body.
	tunnelAPIMaxHeaderBytes = 16 << 10
	// tunnelAPIShutdown bounds how long Close waits for requests in flight.
	tunnelAPIShutdown = 5 * time.Second
)

// tunnelAPI owns the per-network API servers inside the netstack. They are
// shut down before the stack closes, so their listeners end cleanly.
type tunnelAPI struct {
	mu      sync.Mutex
	closed  bool
	servers []*http.Server
}

// serveTunnelAPI starts the read-only API of network k's organization on its
// <prefix>::3:4280. Called by resolvers.sync once per network.
func (g *Gateway) serveTunnelAPI(k store.NetworkKey, prefix netip.Prefix) {
	addr := netip.AddrPortFrom(peers.Resolver(prefix), TunnelAPIPort)
	t := &g.tapi
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	l, err := g.stack.ListenTCP(addr)
	if err != nil {
		g.logf("API for network %s/%s on %s: %v", k.Org, k.Network, addr, err)
		return
	}
	srv := &http.Server{
		Handler:           api.OrgHandler(g.store, k.Org),
		ReadHeaderTimeout: tunnelAPIHeaderTimeout,
		IdleTimeout:       tunnelAPIIdleTimeout,
		MaxHeaderBytes:    tunnelAPIMaxHeaderBytes,
		ErrorLog:          log.New(logfWriter(g.logf), "tunnel API: ", 0),
	}
	t.servers = append(t.servers, srv)
	g.serve("API (tunnel) "+addr.String(), func() error { return srv.Serve(l) })
}

// close shuts every tunnel API server down; idempotent.
func (t *tunnelAPI) close() error {
	t.mu.Lock()
	t.closed = true
	srvs := t.servers
	t.servers = nil
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), tunnelAPIShutdown)
	defer cancel()
	var errs []error
	for _, s := range srvs {
		if err := s.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logfWriter sends net/http's own complaints (bad requests, TLS probes) to
// the gateway's injected logger rather than the process's global one.
type logfWriter func(string, ...any)

func (f logfWriter) Write(b []byte) (int, error) {
	f("%s", b)
	return len(b), nil
}
