package tunnel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

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
				t.handleUAPI(c) // closes c
				t.connMu.Lock()
				delete(t.conns, c)
				t.connMu.Unlock()
			}()
		}
	}()
	return nil
}

// handleUAPI answers one UAPI client until it hangs up, as wireguard-go's
// IpcHandle does, except that a get lists every configured peer (see
// uapiGet): with lazy loading the device alone would show only the peers
// in use.
func (t *Tunnel) handleUAPI(c net.Conn) {
	defer c.Close()
	rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
	for {
		op, err := rw.ReadString('\n')
		if err != nil {
			return
		}
		switch op {
		case "set=1\n":
			err = t.uapiSet(rw.Reader)
		case "get=1\n":
			if b, rerr := rw.ReadByte(); rerr != nil || b != '\n' {
				return
			}
			err = t.uapiGet(rw.Writer)
		default:
			t.logf("wireguard: UAPI: unknown operation %q", strings.TrimSpace(op))
			return
		}
		errno := int64(0)
		if err != nil {
			errno = ipc.IpcErrorUnknown
			var e *device.IPCError
			if errors.As(err, &e) {
				errno = e.ErrorCode()
			}
		}
		fmt.Fprintf(rw, "errno=%d\n\n", errno)
		if rw.Flush() != nil {
			return
		}
	}
}

// uapiSet applies a UAPI set to the device. A configured peer the set
// removed from the device is marked unloaded, with its counters kept, so
// that its next handshake or packet loads it again.
func (t *Tunnel) uapiSet(r io.Reader) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	before, err := t.deviceStats()
	if err != nil {
		return err
	}
	err = t.dev.IpcSetOperation(r)
	after, serr := t.deviceStats()
	if serr != nil {
		return errors.Join(err, serr)
	}
	in := make(map[wgtypes.Key]bool, len(after))
	for _, s := range after {
		in[s.PublicKey] = true
	}
	tab := t.table.Load()
	for _, s := range before {
		if e := tab.byKey[s.PublicKey]; e != nil && e.loaded.Load() && !in[s.PublicKey] {
			e.saved = mergeStats(e.saved, s)
			e.reachable.Store(e.saved.Endpoint.IsValid())
			e.loaded.Store(false)
			t.unloads.Add(1)
		}
	}
	return err
}

// uapiGet writes the UAPI get answer: the device's own lines, then every
// configured peer with the counters kept across loads (as Stats reports
// them), then any peer set on the device through UAPI by hand, as the
// device reports it.
func (t *Tunnel) uapiGet(w io.Writer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.dev.IpcGet()
	if err != nil {
		return err
	}
	_, live, err := parseIpcGet(s)
	if err != nil {
		return err
	}
	// The device's text is its own lines, then one block per peer, each
	// starting with public_key (no other key contains that string).
	head, rest, _ := strings.Cut(s, "public_key=")
	io.WriteString(w, head)
	for _, p := range t.mergedStatsLocked(live) {
		writePeer(w, p)
	}
	tab := t.table.Load()
	for _, block := range strings.Split(rest, "public_key=") {
		hexKey, _, _ := strings.Cut(block, "\n")
		if k, err := parseHexKey(hexKey); err == nil && tab.byKey[k] == nil {
			io.WriteString(w, "public_key="+block)
		}
	}
	return nil
}

// writePeer writes p in the UAPI get format.
func writePeer(w io.Writer, p PeerStats) {
	var b []byte
	b = appendKeyLine(b, p.PublicKey)
	b = append(b, "protocol_version=1\n"...)
	if p.Endpoint.IsValid() {
		b = fmt.Appendf(b, "endpoint=%s\n", p.Endpoint)
	}
	var sec, nsec int64
	if !p.LastHandshake.IsZero() {
		sec, nsec = p.LastHandshake.Unix(), int64(p.LastHandshake.Nanosecond())
	}
	b = fmt.Appendf(b, "last_handshake_time_sec=%d\nlast_handshake_time_nsec=%d\n", sec, nsec)
	b = fmt.Appendf(b, "tx_bytes=%d\nrx_bytes=%d\npersistent_keepalive_interval=0\n", p.TxBytes, p.RxBytes)
	for _, a := range p.AllowedIPs {
		b = append(b, "allowed_ip="...)
		b = a.AppendTo(b)
		b = append(b, '\n')
	}
	w.Write(b)
}
