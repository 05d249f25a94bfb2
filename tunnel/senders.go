package tunnel

import (
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
)

// senders maps endpoints to the loaded peers whose checked initiations came
// from them. An initiation from one of them goes to wireguard-go at once;
// any other is withheld until the checker hands it back (lazy.go). Each
// peer has one entry at most (lazyPeer.from), removed when it unloads, so
// the map is no larger than the peer table.
type senders struct {
	mu sync.Mutex
	m  map[netip.AddrPort]*lazyPeer
}

// endpointAddr is ep's address and port, or false for an endpoint type
// the gateway's binds do not make.
func endpointAddr(ep conn.Endpoint) (netip.AddrPort, bool) {
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		return netip.AddrPortFrom(se.Addr().Unmap(), se.Port()), true
	}
	return netip.AddrPort{}, false
}

// loaded reports whether ep is a known sender whose peer is still loaded.
func (s *senders) loaded(ep conn.Endpoint) bool {
	ap, ok := endpointAddr(ep)
	if !ok {
		return false
	}
	s.mu.Lock()
	e := s.m[ap]
	s.mu.Unlock()
	return e != nil && e.loaded.Load()
}

// set makes ep e's known endpoint, in place of its last one.
func (s *senders) set(ep conn.Endpoint, e *lazyPeer) {
	ap, ok := endpointAddr(ep)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[netip.AddrPort]*lazyPeer)
	}
	s.forgetLocked(e)
	if prev := s.m[ap]; prev != nil {
		prev.from = netip.AddrPort{}
	}
	s.m[ap], e.from = e, ap
}

// forget removes e's entry, if it has one.
func (s *senders) forget(e *lazyPeer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetLocked(e)
}

func (s *senders) forgetLocked(e *lazyPeer) {
	if e.from.IsValid() && s.m[e.from] == e {
		delete(s.m, e.from)
	}
	e.from = netip.AddrPort{}
}
