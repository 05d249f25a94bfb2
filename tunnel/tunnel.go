package tunnel

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
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
	dev  *device.Device
	logf func(string, ...any)
	port int

	uapi    net.Listener
	uapiSem chan struct{}
	wg      sync.WaitGroup

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // open UAPI clients, closed by Close

	mu    sync.Mutex // serializes SetPeers
	peers map[wgtypes.Key][]netip.Prefix

	closeOnce sync.Once
}

// New starts a WireGuard device on cfg.TUN.
func New(cfg Config) (*Tunnel, error) {
	if cfg.TUN == nil {
		return nil, errors.New("tunnel: Config.TUN is required")
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	t := &Tunnel{logf: logf, peers: make(map[wgtypes.Key][]netip.Prefix), uapiSem: make(chan struct{}, maxUAPIConns), conns: make(map[net.Conn]struct{})}
	var bind conn.Bind = gsoBind{conn.NewDefaultBind()}
	if cfg.ListenAddr.IsValid() {
		bind = &addrBind{addr: cfg.ListenAddr.Unmap()}
	}
	t.dev = device.NewDevice(cfg.TUN, bind, newRateLimitedLogger(logf))
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort)
	err := t.dev.IpcSet(conf)
	if err == nil {
		err = t.dev.Up()
	}
	if err != nil {
		t.dev.Close()
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("UDP port %d is already in use; stop the other program or choose another with --listen-port: %w", cfg.ListenPort, ErrPortInUse)
		}
		return nil, fmt.Errorf("start wireguard on UDP port %d: %w", cfg.ListenPort, err)
	}
	port, err := t.listenPort()
	if err != nil {
		t.dev.Close()
		return nil, err
	}
	t.port = port
	if cfg.UAPIPath != "" {
		if err := t.serveUAPI(cfg.UAPIPath); err != nil {
			t.dev.Close()
			return nil, err
		}
	}
	return t, nil
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

// serveUAPI serves wireguard-go's UAPI on a unix socket, as the wg tool and
// wgctrl expect at /var/run/wireguard/<name>.sock.
func (t *Tunnel) serveUAPI(path string) error {
	// A socket left by a crashed gateway would make Listen fail.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("UAPI socket %s: %w (is another gateway running with the same name?)", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("UAPI socket %s: %w", path, err)
	}
	t.uapi = l
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case t.uapiSem <- struct{}{}:
			default:
				c.Close()
				continue
			}
			t.connMu.Lock()
			t.conns[c] = struct{}{}
			t.connMu.Unlock()
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				defer func() { <-t.uapiSem }()
				t.dev.IpcHandle(c) // closes c
				t.connMu.Lock()
				delete(t.conns, c)
				t.connMu.Unlock()
			}()
		}
	}()
	return nil
}

// SetPeers makes the device's peers exactly ps. Peers that did not change
// are not touched, so their sessions and connections carry on.
func (t *Tunnel) SetPeers(ps []Peer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	want := make(map[wgtypes.Key][]netip.Prefix, len(ps))
	for _, p := range ps {
		a := slices.Clone(p.AllowedIPs)
		slices.SortFunc(a, func(x, y netip.Prefix) int {
			if c := x.Addr().Compare(y.Addr()); c != 0 {
				return c
			}
			return x.Bits() - y.Bits()
		})
		want[p.PublicKey] = a
	}
	var b strings.Builder
	for k := range t.peers {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
		}
	}
	for k, a := range want {
		old, ok := t.peers[k]
		if ok && slices.Equal(old, a) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(k[:]))
		if ok {
			b.WriteString("update_only=true\n")
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, p := range a {
			fmt.Fprintf(&b, "allowed_ip=%s\n", p)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := t.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("set wireguard peers: %w", err)
	}
	t.peers = want
	return nil
}

// Stats returns per-peer state as the device reports it.
func (t *Tunnel) Stats() ([]PeerStats, error) {
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
		if t.uapi != nil {
			t.uapi.Close()
		}
		t.connMu.Lock()
		for c := range t.conns {
			c.Close()
		}
		t.connMu.Unlock()
		t.dev.Close()
		t.wg.Wait()
	})
	return nil
}
