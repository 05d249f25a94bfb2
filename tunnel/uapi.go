package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// serveUAPI serves wireguard-go's UAPI on a unix socket, as the wg tool and
// wgctrl expect at /var/run/wireguard/<name>.sock.
func (t *Tunnel) serveUAPI(path string) error {
	// A socket left by a crashed gateway would make Listen fail; one that
	// answers belongs to a running gateway and is not taken over.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return fmt.Errorf("UAPI socket %s is in use by a running gateway; give this one another --wg-interface", path)
		}
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
			select {
			case <-t.closing: // Close already closed the others
				t.connMu.Unlock()
				c.Close()
				<-t.uapiSem
				return
			default:
			}
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

// maxUAPISet bounds one UAPI set request: 10,000 peers written by
// `wg setconf` take ~2 MB.
const maxUAPISet = 16 << 20

// handleUAPI answers one UAPI client until it hangs up, as wireguard-go's
// IpcHandle does, except that a get lists every configured peer (see
// uapiGet): with lazy loading the device alone would show only the peers
// in use. The tunnel's lock is never held while the client is read or
// written, so a slow client cannot stall peer loading.
func (t *Tunnel) handleUAPI(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		op, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var out []byte
		desync := false // the request was not read to its end
		switch op {
		case "set=1\n":
			req, rerr := readUAPISet(r)
			switch {
			case rerr == nil:
				err = t.uapiSet(req)
			case errors.As(rerr, new(uapiError)): // too long
				err, desync = rerr, true
			default:
				return // the client went away
			}
		case "get=1\n":
			b, rerr := r.ReadByte()
			switch {
			case rerr != nil:
				return
			case b != '\n':
				desync = true
				err = uapiError{ipc.IpcErrorInvalid, fmt.Sprintf("UAPI get: trailing character %q; a get is \"get=1\" and a blank line", b)}
			default:
				out, err = t.uapiGet()
			}
		default:
			t.logf("wireguard: UAPI: unknown operation %q", strings.TrimSpace(op))
			return
		}
		errno := int64(0)
		if err != nil {
			t.logf("wireguard: UAPI: %v", err)
			errno = ipc.IpcErrorUnknown
			var e interface{ ErrorCode() int64 } // *device.IPCError, uapiError
			if errors.As(err, &e) {
				errno = e.ErrorCode()
			}
		}
		out = fmt.Appendf(out, "errno=%d\n\n", errno)
		if _, werr := c.Write(out); werr != nil || desync {
			return
		}
	}
}

// uapiError is a UAPI failure with the errno the client gets.
type uapiError struct {
	code int64
	msg  string
}

func (e uapiError) Error() string    { return e.msg }
func (e uapiError) ErrorCode() int64 { return e.code }

// readUAPISet reads a set request's lines up to and including the blank
// line that ends it.
func readUAPISet(r *bufio.Reader) ([]byte, error) {
	var req []byte
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		if len(req)+len(line) > maxUAPISet {
			return nil, uapiError{ipc.IpcErrorInvalid, fmt.Sprintf("UAPI set over %d bytes; set the peers in smaller requests", maxUAPISet)}
		}
		req = append(req, line...)
		if err == nil && len(line) == 1 && (len(req) == 1 || req[len(req)-2] == '\n') {
			return req, nil
		}
	}
}

// uapiSet applies a UAPI set to the device and brings the table in line:
// a configured peer the set removed is unloaded with its counters kept (its
// next handshake or packet loads it again); one the set added is loaded;
// one it recreated (replace_peers) keeps the counters it had. The device's
// own keys are refused: lazy loading answers handshakes with the private
// key and port devgate set, so those change only through devgate's config.
func (t *Tunnel) uapiSet(req []byte) error {
	for line := range strings.SplitSeq(string(req), "\n") {
		key, _, _ := strings.Cut(line, "=")
		if key == "public_key" {
			break // peer lines from here on
		}
		if key == "private_key" || key == "listen_port" {
			return uapiError{ipc.IpcErrorInvalid, "UAPI set of " + key + " refused: devgate sets the gateway's key and port (serve --listen-port; the key is in the data dir)"}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	before, err := t.deviceStats()
	if err != nil {
		return err
	}
	err = t.dev.IpcSetOperation(bytes.NewReader(req))
	after, serr := t.deviceStats()
	if serr != nil {
		return errors.Join(err, serr)
	}
	was := make(map[wgtypes.Key]PeerStats, len(before))
	for _, s := range before {
		was[s.PublicKey] = s
	}
	tab := t.table.Load()
	now := time.Now()
	for _, s := range after {
		e := tab.byKey[s.PublicKey]
		if e == nil {
			continue // a peer of the operator's own
		}
		if b, ok := was[s.PublicKey]; ok && (s.RxBytes < b.RxBytes || s.TxBytes < b.TxBytes) {
			e.saved = mergeStats(e.saved, b) // recreated: its counters restarted
		}
		if !e.loaded.Load() {
			t.markLoadedLocked(e, now)
		}
		delete(was, s.PublicKey)
	}
	for k, b := range was { // in the device before, not after: removed
		if e := tab.byKey[k]; e != nil && e.loaded.Load() {
			t.markUnloadedLocked(e, b)
		}
	}
	return err
}

// uapiGet returns the UAPI get answer: the device's own lines, then every
// configured peer with the counters kept across loads (as Stats reports
// them), then any peer set on the device through UAPI by hand, as the
// device reports it.
func (t *Tunnel) uapiGet() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	_, live, err := parseIpcGet(s)
	if err != nil {
		return nil, err
	}
	// The device's text is its own lines, then one block per peer, each
	// starting with public_key (no other key contains that string).
	head, rest, _ := strings.Cut(s, "public_key=")
	out := []byte(head)
	for _, p := range t.mergedStatsLocked(live) {
		out = appendPeer(out, p)
	}
	tab := t.table.Load()
	for _, block := range strings.Split(rest, "public_key=") {
		hexKey, _, _ := strings.Cut(block, "\n")
		if k, err := parseHexKey(hexKey); err == nil && tab.byKey[k] == nil {
			out = append(out, "public_key="...)
			out = append(out, block...)
		}
	}
	return out, nil
}

// appendPeer appends p in the UAPI get format.
func appendPeer(b []byte, p PeerStats) []byte {
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
	return appendAllowedIPs(b, p.AllowedIPs)
}
