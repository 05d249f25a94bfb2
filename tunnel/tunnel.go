package tunnel

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
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
	// The UAPI text is appended into one buffer sized up front (about
	// 1.5 MB for 10,000 new peers) rather than printed through fmt into a
	// growing builder: that cut SetPeers' own allocation from 1.2 KB to
	// 0.3 KB per peer (alloc_space, BenchmarkIdlePeers10k). It is no lever
	// on memory or start time, though: wireguard-go allocates ~30 KB per
	// peer and spends the start on two X25519 operations per peer.
	b := make([]byte, 0, uapiLen(t.peers, want))
	for k := range t.peers {
		if _, ok := want[k]; !ok {
			b = appendKeyLine(b, k)
			b = append(b, "remove=true\n"...)
		}
	}
	for k, a := range want {
		old, ok := t.peers[k]
		if ok && slices.Equal(old, a) {
			continue
		}
		b = appendKeyLine(b, k)
		if ok {
			b = append(b, "update_only=true\n"...)
		}
		b = append(b, "replace_allowed_ips=true\n"...)
		for _, p := range a {
			b = append(b, "allowed_ip="...)
			b = p.AppendTo(b)
			b = append(b, '\n')
		}
	}
	if len(b) == 0 {
		return nil
	}
	if err := t.dev.IpcSetOperation(bytes.NewReader(b)); err != nil {
		return fmt.Errorf("set wireguard peers: %w", err)
	}
	t.peers = want
	return nil
}

// Lengths of SetPeers' UAPI lines, for sizing its buffer: a key line, the
// longest peer lines, and an allowed_ip line with the longest prefix.
const (
	uapiKeyLen    = len("public_key=\n") + 2*wgtypes.KeyLen
	uapiPeerLen   = uapiKeyLen + len("update_only=true\nreplace_allowed_ips=true\n")
	uapiRemoveLen = uapiKeyLen + len("remove=true\n")
	uapiPrefixLen = len("allowed_ip=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n")
)

// uapiLen bounds the length of the UAPI text that moves the device from
// peers have to want.
func uapiLen(have, want map[wgtypes.Key][]netip.Prefix) int {
	n := uapiRemoveLen * len(have)
	for _, a := range want {
		n += uapiPeerLen + uapiPrefixLen*len(a)
	}
	return n
}

func appendKeyLine(b []byte, k wgtypes.Key) []byte {
	b = append(b, "public_key="...)
	b = hex.AppendEncode(b, k[:])
	return append(b, '\n')
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
