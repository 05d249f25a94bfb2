package flycast

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/store"
)

// spliceBufSize is the copy buffer a direction borrows while data flows in
// bulk: large enough for loopback and netstack throughput.
const spliceBufSize = 64 << 10

// idleBufSize is the buffer a direction owns and reads into while traffic
// is light. A connection spends most of its life blocked in Read, so this,
// not spliceBufSize, is what an idle connection costs (2 × 2 KiB).
const idleBufSize = 2 << 10

// backendDialTimeout bounds a dial to a started machine, which is on this
// host: a slow dial means the machine is wedged.
const backendDialTimeout = 5 * time.Second

var bufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}

type handlerKind int

const (
	kindRaw handlerKind = iota
	kindHTTP
)

// portHandler serves one port range of one service. It is built by Update
// and returned by RouteTCP without allocating.
type portHandler struct {
	p          *Proxy
	app        *App
	svc        *Service
	start, end int
	kind       handlerKind
	proxyProto string // "", "v1", "v2"
	forceHTTPS bool
}

func buildRoutes(p *Proxy, a *App) []*portHandler {
	var out []*portHandler
	for i := range a.Services {
		svc := &a.Services[i]
		for _, port := range svc.Ports {
			h := &portHandler{p: p, app: a, svc: svc, start: port.Start, end: port.End, forceHTTPS: port.ForceHTTPS}
			if h.end < h.start {
				h.end = h.start
			}
			tls := slices.Contains(port.Handlers, "tls")
			if slices.Contains(port.Handlers, "http") && !tls {
				h.kind = kindHTTP
			}
			if h.kind == kindRaw && (slices.Contains(port.Handlers, "proxy_proto") || svc.ProxyProto != "") {
				h.proxyProto = svc.ProxyProto
				if h.proxyProto == "" {
					h.proxyProto = "v1"
				}
			}
			out = append(out, h)
		}
	}
	return out
}

// ServeTCP implements netstack.TCPHandler.
func (h *portHandler) ServeTCP(r netstack.TCPRequest) {
	p := h.p
	if !p.running() || !p.admit() {
		p.met.refused.WithLabelValues(h.app.Name, "overload").Inc()
		r.Refuse()
		return
	}
	if h.kind == kindHTTP {
		p.serveHTTPConn(h, r) // releases the flow slot when the conn closes
		return
	}
	defer p.flows.Add(-1)
	ms, addr, err := p.acquireBackend(p.ctx, h.app, h.svc)
	if err != nil {
		p.met.refused.WithLabelValues(h.app.Name, refuseReason(err)).Inc()
		p.cfg.Logf("flycast: %s -> %s refused: %v", r.Src(), r.Dst(), err)
		r.Refuse()
		return
	}
	defer p.release(ms, h.app.Name)
	// The backend is dialled before Accept: the client's SYN is held until
	// the machine accepted, so the client never sees a refused connection.
	back, err := p.dialBackend(ms, addr)
	if err != nil {
		p.met.refused.WithLabelValues(h.app.Name, "backend_dial").Inc()
		p.cfg.Logf("flycast: %s -> %s: %v", r.Src(), r.Dst(), err)
		r.Refuse()
		return
	}
	defer p.forgetConn(ms, back)
	if h.proxyProto != "" {
		hdr := proxyHeader(h.proxyProto, r.Src(), r.Dst())
		if _, err := back.Write(hdr); err != nil {
			back.Close()
			r.Refuse()
			return
		}
	}
	client, err := r.Accept()
	if err != nil {
		back.Close()
		return
	}
	p.met.connections.WithLabelValues(h.app.Name, ms.id).Inc()
	p.spliceTracked(ms, client, back)
}

// acquireBackend is acquire plus the machine's backend address. When the
// store calls a machine started but its driver does not run it (after a
// gateway restart), backendAddr records it stopped and the connection tries
// once more, which wakes a machine instead of failing. The caller releases
// the machine.
func (p *Proxy) acquireBackend(ctx context.Context, a *App, svc *Service) (*machineState, string, error) {
	for attempt := 0; ; attempt++ {
		ms, err := p.acquire(ctx, a, svc)
		if err != nil {
			return nil, "", err
		}
		p.mu.Lock()
		rec := ms.rec
		p.mu.Unlock()
		addr, err := p.backendAddr(ms, rec, svc.InternalPort)
		if err == nil {
			return ms, addr, nil
		}
		p.release(ms, a.Name)
		if !errors.Is(err, machines.ErrNotRunning) || attempt >= 1 {
			return nil, "", err
		}
	}
}

// dialBackend connects to a started machine's backend address and
// registers the conn so that the machine's exit or stop closes it.
func (p *Proxy) dialBackend(ms *machineState, addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, backendDialTimeout)
	if err != nil {
		return nil, fmt.Errorf("dial machine %s at %s: %w", ms.id, addr, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ms.isStarted() || p.closed {
		c.Close()
		return nil, fmt.Errorf("dial machine %s: %w", ms.id, machines.ErrNotRunning)
	}
	ms.addConnLocked(c)
	return c, nil
}

// backendAddr asks the driver where the machine's port is. A machine the
// store calls started but the driver does not run (after a gateway restart)
// is recorded as stopped, so the next connection wakes it.
func (p *Proxy) backendAddr(ms *machineState, rec store.Machine, port int) (string, error) {
	drv, err := p.driverOf(rec)
	if err != nil {
		return "", err
	}
	ap, err := drv.Backend(rec.ID, port)
	if errors.Is(err, machines.ErrNotRunning) {
		p.mu.Lock()
		owned := ms.wake != nil || ms.stopDone != nil
		p.mu.Unlock()
		if !owned {
			p.persist(ms, rec.ID, func(m *store.Machine) {
				m.State = store.MachineStopped
				m.Reason = "not running"
			})
		}
	}
	if err != nil {
		return "", fmt.Errorf("machine %s port %d: %w", rec.ID, port, err)
	}
	return ap.String(), nil
}

// spliceTracked splices with the client conn registered on the machine
// too, so that the machine's exit or stop ends the client's connection even
// while the client is silent.
func (p *Proxy) spliceTracked(ms *machineState, client, back net.Conn) {
	p.mu.Lock()
	ms.addConnLocked(client)
	p.mu.Unlock()
	defer p.forgetConn(ms, client)
	splice(ms, client, back)
}

// splice copies both directions until both ended, passing half-closes on,
// and closes both conns.
func splice(ms *machineState, client, back net.Conn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyHalf(ms, client, back)
	}()
	copyHalf(ms, back, client)
	wg.Wait()
	client.Close()
	back.Close()
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst, marking the machine active on every read.
// On EOF it half-closes dst; on an error it closes both, which also ends
// the other direction.
func copyHalf(ms *machineState, dst, src net.Conn) {
	small := make([]byte, idleBufSize)
	var big *[]byte // borrowed from bufPool while reads fill buffers
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		buf := small
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			ms.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				dst.Close()
				return
			}
		}
		switch {
		case big == nil && n == len(small):
			big = bufPool.Get().(*[]byte) // bulk: read in large chunks
		case big != nil && n < idleBufSize:
			bufPool.Put(big) // a lull: do not hold 64 KiB while blocked
			big = nil
		}
		if rerr != nil {
			if rerr == io.EOF {
				if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
					return
				}
			}
			src.Close()
			dst.Close()
			return
		}
	}
}

// directHandler serves connections to a machine's own 6PN address: only
// started machines, never a wake, like Fly's .internal names.
type directHandler struct{ p *Proxy }

// ServeTCP implements netstack.TCPHandler.
func (d *directHandler) ServeTCP(r netstack.TCPRequest) {
	p := d.p
	ms := p.view.Load().byAddr[r.Dst().Addr()]
	if ms == nil || !p.running() || !p.admit() {
		r.Refuse()
		return
	}
	defer p.flows.Add(-1)
	p.mu.Lock()
	if !ms.isStarted() {
		p.mu.Unlock()
		r.Refuse()
		return
	}
	ms.direct++
	rec := ms.rec
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		ms.direct--
		ms.touch()
		p.mu.Unlock()
	}()
	addr, err := p.backendAddr(ms, rec, int(r.Dst().Port()))
	var back net.Conn
	if err == nil {
		back, err = p.dialBackend(ms, addr)
	}
	if err != nil {
		p.cfg.Logf("flycast: direct %s -> %s: %v", r.Src(), r.Dst(), err)
		r.Refuse()
		return
	}
	defer p.forgetConn(ms, back)
	client, err := r.Accept()
	if err != nil {
		back.Close()
		return
	}
	p.met.connections.WithLabelValues(rec.App, ms.id).Inc()
	p.spliceTracked(ms, client, back)
}
