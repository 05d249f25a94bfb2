package tunnel

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrPortInUse is wrapped by New when the UDP port is taken.
var ErrPortInUse = errors.New("UDP port in use")

// maxUAPIConns bounds concurrent UAPI clients. The socket is 0600 so only
// the gateway's user can connect, but a stuck client must not pile up
// goroutines.
const maxUAPIConns = 16

// Config configures a Tunnel.
type Config struct {
	// PrivateKey is the gateway's WireGuard key (see LoadOrCreateKey).
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port; 0 picks a free one (see Tunnel.Port).
	ListenPort int
	// ListenAddr, when valid, restricts the UDP socket to that local
	// address; otherwise the device listens on all addresses.
	ListenAddr netip.Addr
	// TUN receives decrypted packets and supplies packets to encrypt.
	TUN tun.Device
	// UAPIPath is where to serve the UAPI socket, typically
	// /var/run/wireguard/<name>.sock; "" serves none.
	UAPIPath string
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// Peer is one WireGuard peer the gateway accepts.
type Peer struct {
	PublicKey  wgtypes.Key
	AllowedIPs []netip.Prefix
}

// Tunnel is a running WireGuard device.
type Tunnel struct {
	dev    *device.Device
	devLog *rateLimiter // the device's logger, stopped by closeDevice
	logf   func(string, ...any)
	port   int

	uapi    net.Listener
	uapiSem chan struct{}
	wg      sync.WaitGroup

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // open UAPI clients, closed by Close

	// mu serializes changes to the device's peers: SetPeers, loads and
	// unloads. The packet paths never take it (see lazy.go).
	mu        sync.Mutex
	table     atomic.Pointer[peerTable]
	responder *responder
	checks    chan heldInitiation // to checkLoop
	inject    chan heldInitiation // from checkLoop, to the receive path
	waker     *net.UDPConn        // see wakeReceive
	loads     atomic.Uint64
	unloads   atomic.Uint64
	replays   atomic.Uint64 // initiations refused by a replay floor
	// handedBack counts withheld initiations handed back to wireguard-go.
	handedBack atomic.Uint64
	closing    chan struct{} // closed by Close, before the device
	inflight   *inflight     // the receive gate, see inflight.go
	sendGate   *sendGate     // see sendgate.go

	closeOnce sync.Once
}

// New starts a WireGuard device on cfg.TUN.
func New(cfg Config) (*Tunnel, error) { return newTunnel(cfg, nil) }

// newTunnel is New with wrapBind, if not nil, around the UDP bind (for
// tests that hold the socket).
func newTunnel(cfg Config, wrapBind func(conn.Bind) conn.Bind) (*Tunnel, error) {
	if cfg.TUN == nil {
		return nil, errors.New("tunnel: Config.TUN is required")
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	t := &Tunnel{logf: logf, uapiSem: make(chan struct{}, maxUAPIConns), conns: make(map[net.Conn]struct{}),
		responder: newResponder(cfg.PrivateKey), closing: make(chan struct{}), inflight: newInflight(), sendGate: newSendGate(),
		checks: make(chan heldInitiation, checkQueue), inject: make(chan heldInitiation, injectQueue)}
	t.table.Store(newPeerTable(0))
	var bind conn.Bind = gsoBind{conn.NewDefaultBind()}
	if cfg.ListenAddr.IsValid() {
		bind = &addrBind{addr: cfg.ListenAddr.Unmap()}
	}
	if wrapBind != nil {
		bind = wrapBind(bind)
	}
	t.devLog = newRateLimiter(logf)
	t.dev = device.NewDevice(&lazyTUN{Device: cfg.TUN, t: t, timer: stoppedTimer()}, lazyBind{Bind: bind, t: t}, t.devLog.logger())
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort)
	err := t.dev.IpcSet(conf)
	if err == nil {
		err = t.dev.Up()
	}
	inUse := func() error {
		return fmt.Errorf("UDP port %d is already in use; stop the other program or choose another with --listen-port: %w", cfg.ListenPort, ErrPortInUse)
	}
	if err != nil {
		t.closeDevice()
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, inUse()
		}
		return nil, fmt.Errorf("start wireguard on UDP port %d: %w", cfg.ListenPort, err)
	}
	port, err := t.listenPort()
	if err != nil {
		t.closeDevice()
		return nil, err
	}
	if cfg.ListenPort != 0 && port != cfg.ListenPort {
		// The netstack's link reports itself up at once, and wireguard-go
		// brings the device up on that event too: when that bind fails
		// between our setting the port and rebinding, wireguard-go forgets
		// the port and our Up binds a random one, with no error.
		t.closeDevice()
		return nil, inUse()
	}
	t.port = port
	if cfg.UAPIPath != "" {
		if err := t.serveUAPI(cfg.UAPIPath); err != nil {
			t.closeDevice()
			return nil, err
		}
	}
	wakeAddr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
	if cfg.ListenAddr.IsValid() {
		wakeAddr = netip.AddrPortFrom(cfg.ListenAddr.Unmap(), uint16(port))
	}
	if t.waker, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(wakeAddr)); err != nil {
		// Without it a loaded peer's first initiation waits for the next
		// datagram; the initiator's retry would bring one within 5 s.
		t.logf("wireguard: no wake socket for lazy peer loads: %v", err)
	}
	t.wg.Add(2)
	go t.sweepLoop()
	go t.checkLoop()
	return t, nil
}

// closeDevice closes the device and stops its logging: wireguard-go's
// workers may still be exiting, and nothing of theirs is logged after
// the tunnel is closed.
func (t *Tunnel) closeDevice() {
	t.dev.Close()
	t.devLog.stop()
}

// Port is the UDP port the device listens on.
func (t *Tunnel) Port() int { return t.port }

func (t *Tunnel) listenPort() (int, error) {
	s, err := t.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("read wireguard state: %w", err)
	}
	dev, _, err := parseIpcGet(s)
	if err != nil {
		return 0, err
	}
	return dev.ListenPort, nil
}

// SetPeers makes the configured peers exactly ps. They are kept in the
// tunnel's table; the device holds only the peers in use (see lazy.go).
// Loaded peers that did not change are not touched, so their sessions and
// connections carry on; loaded peers that were removed are cut off at once.
func (t *Tunnel) SetPeers(ps []Peer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.table.Load()
	next := newPeerTable(len(ps))
	type change struct {
		e       *lazyPeer
		allowed []netip.Prefix
	}
	var changed []change
	var b []byte
	for _, p := range ps {
		a := slices.Clone(p.AllowedIPs)
		slices.SortFunc(a, func(x, y netip.Prefix) int {
			if c := x.Addr().Compare(y.Addr()); c != 0 {
				return c
			}
			return x.Bits() - y.Bits()
		})
		e := old.byKey[p.PublicKey]
		switch {
		case e == nil:
			e = &lazyPeer{key: p.PublicKey, allowed: a}
		case !slices.Equal(e.allowed, a):
			changed = append(changed, change{e, a})
			if e.loaded.Load() {
				b = appendPeerLines(b, e.key, a)
			}
		}
		next.byKey[p.PublicKey] = e
	}
	var removed []*lazyPeer
	for k, e := range old.byKey {
		if _, ok := next.byKey[k]; ok {
			continue
		}
		if e.loaded.Load() {
			b = appendKeyLine(b, k)
			b = append(b, "remove=true\n"...)
			removed = append(removed, e)
		}
	}
	if len(b) > 0 {
		if err := t.dev.IpcSetOperation(bytes.NewReader(b)); err != nil {
			return fmt.Errorf("set wireguard peers: %w", err)
		}
	}
	for _, c := range changed {
		c.e.allowed = c.allowed
	}
	for _, e := range removed {
		e.loaded.Store(false)
	}
	next.index()
	t.table.Store(next)
	return nil
}

func appendKeyLine(b []byte, k wgtypes.Key) []byte {
	b = append(b, "public_key="...)
	b = hex.AppendEncode(b, k[:])
	return append(b, '\n')
}

// Stats returns every configured peer's state: the device's live figures
// for loaded peers, added to what was kept from their earlier loads.
func (t *Tunnel) Stats() ([]PeerStats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	live, err := t.deviceStats()
	if err != nil {
		return nil, err
	}
	return t.mergedStatsLocked(live), nil
}

// mergedStatsLocked is every configured peer's state, sorted by key, from
// the device's live figures and the table. t.mu must be held.
func (t *Tunnel) mergedStatsLocked(live []PeerStats) []PeerStats {
	byKey := make(map[wgtypes.Key]PeerStats, len(live))
	for _, s := range live {
		byKey[s.PublicKey] = s
	}
	tab := t.table.Load()
	out := make([]PeerStats, 0, len(tab.byKey))
	for k, e := range tab.byKey {
		s := e.saved
		if e.loaded.Load() {
			s = mergeStats(s, byKey[k])
		}
		s.PublicKey, s.AllowedIPs = k, slices.Clone(e.allowed)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out
}

// LoadStats counts the peers the device holds now, the loads and unloads
// so far, and the initiations refused as replays (replay.go).
type LoadStats struct {
	Configured, Loaded      int
	Loads, Unloads, Replays uint64
	// HandedBack counts withheld initiations the checker handed to
	// wireguard-go (lazy.go).
	HandedBack uint64
}

// Loads reports how lazy loading stands.
func (t *Tunnel) Loads() LoadStats {
	tab := t.table.Load()
	ls := LoadStats{Configured: len(tab.byKey), Loads: t.loads.Load(), Unloads: t.unloads.Load(), Replays: t.replays.Load(),
		HandedBack: t.handedBack.Load()}
	for _, e := range tab.byKey {
		if e.loaded.Load() {
			ls.Loaded++
		}
	}
	return ls
}

// deviceStats reads the peers the device holds.
func (t *Tunnel) deviceStats() ([]PeerStats, error) {
	s, err := t.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read wireguard state: %w", err)
	}
	_, ps, err := parseIpcGet(s)
	return ps, err
}

// Close stops the UAPI socket and the device (which closes its TUN).
// It is idempotent.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		close(t.closing)
		if t.waker != nil {
			t.waker.Close()
		}
		if t.uapi != nil {
			t.uapi.Close()
		}
		t.connMu.Lock()
		for c := range t.conns {
			c.Close()
		}
		t.connMu.Unlock()
		t.closeDevice()
		t.wg.Wait()
	})
	return nil
}
