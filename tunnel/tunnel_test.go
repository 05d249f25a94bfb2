package tunnel

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wg.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Error("second load returned a different key")
	}
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt key: err = %v, want a 'corrupt' error", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "not a key\n" {
		t.Error("corrupt key file was replaced")
	}
}

func TestPortInUse(t *testing.T) {
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	_, err = New(Config{ListenPort: port, TUN: tuntest.NewChannelTUN().TUN()})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "--listen-port") {
		t.Fatalf("err = %v, want ErrPortInUse with advice", err)
	}
}

func TestRandomPortAndIdempotentClose(t *testing.T) {
	tn, err := New(Config{TUN: tuntest.NewChannelTUN().TUN()})
	if err != nil {
		t.Fatal(err)
	}
	if tn.Port() == 0 {
		t.Error("Port() = 0 after a random port was chosen")
	}
	tn.Close()
	tn.Close()
}

func TestRateLimitedLogger(t *testing.T) {
	var lines []string
	now := time.Unix(0, 0)
	r := newRateLimiter(func(f string, a ...any) { lines = append(lines, f) })
	r.now = func() time.Time { return now }
	logf := r.logfFor("")
	for range 5 {
		logf("handshake failed for %s", "peer")
	}
	now = now.Add(logInterval)
	logf("handshake failed for %s", "peer")
	logf("other %d", 1)
	if len(lines) != 3 || !strings.Contains(lines[1], "more like it") {
		t.Fatalf("lines = %q, want first, one with a suppressed count, other", lines)
	}
	r.stop()
	now = now.Add(logInterval)
	logf("after the device closed %d", 1)
	if len(lines) != 3 {
		t.Fatalf("a line was logged after stop: %q", lines[3:])
	}
}

func TestParseIpcGet(t *testing.T) {
	in := "private_key=00\nlisten_port=51820\npublic_key=" + strings.Repeat("ab", 32) +
		"\nendpoint=127.0.0.1:1234\nlast_handshake_time_sec=100\nlast_handshake_time_nsec=5\n" +
		"rx_bytes=10\ntx_bytes=20\nallowed_ip=fdaa::/120\nerrno=0\n"
	dev, ps, err := parseIpcGet(in)
	if err != nil {
		t.Fatal(err)
	}
	if dev.ListenPort != 51820 || len(ps) != 1 {
		t.Fatalf("dev = %+v, peers = %+v", dev, ps)
	}
	p := ps[0]
	if p.RxBytes != 10 || p.TxBytes != 20 || p.LastHandshake.Unix() != 100 || p.Endpoint.Port() != 1234 || len(p.AllowedIPs) != 1 {
		t.Errorf("peer = %+v", p)
	}
	if _, _, err := parseIpcGet("public_key=zz\n"); err == nil {
		t.Error("bad key accepted")
	}
}

func FuzzParseIpcGet(f *testing.F) {
	f.Add("listen_port=1\npublic_key=" + strings.Repeat("00", 32) + "\nrx_bytes=1\nallowed_ip=::/0\n")
	f.Add("garbage")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		_, ps, err := parseIpcGet(s)
		if err != nil && ps != nil {
			t.Fatal("peers returned with an error")
		}
	})
}

// TestSetPeersDiff drives a real wireguard-go device through the three kinds
// of change SetPeers makes to loaded peers (new allowed IPs, removal, and a
// new peer, which stays out of the device until loaded) and checks the
// device's peers and the configured set after each.
func TestSetPeersDiff(t *testing.T) {
	tn, err := New(Config{TUN: tuntest.NewChannelTUN().TUN()})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey()
	}
	a, b, c := key(), key(), key()
	pfx := netip.MustParsePrefix
	peersOf := func(ps []PeerStats) map[wgtypes.Key][]netip.Prefix {
		got := map[wgtypes.Key][]netip.Prefix{}
		for _, p := range ps {
			slices.SortFunc(p.AllowedIPs, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
			got[p.PublicKey] = p.AllowedIPs
		}
		return got
	}
	set := func(want map[wgtypes.Key][]netip.Prefix) {
		t.Helper()
		var ps []Peer
		for k, a := range want {
			ps = append(ps, Peer{PublicKey: k, AllowedIPs: a})
		}
		if err := tn.SetPeers(ps); err != nil {
			t.Fatal(err)
		}
	}
	check := func(configured, inDevice map[wgtypes.Key][]netip.Prefix) {
		t.Helper()
		ps, err := tn.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if got := peersOf(ps); !maps.EqualFunc(got, configured, slices.Equal) {
			t.Errorf("configured peers = %v, want %v", got, configured)
		}
		dev, err := tn.deviceStats()
		if err != nil {
			t.Fatal(err)
		}
		if got := peersOf(dev); !maps.EqualFunc(got, inDevice, slices.Equal) {
			t.Errorf("device peers = %v, want %v", got, inDevice)
		}
	}
	v1 := map[wgtypes.Key][]netip.Prefix{a: {pfx("10.0.0.0/24"), pfx("fdaa::100/120")}, b: {pfx("fdaa::300/120")}}
	set(v1)
	check(v1, map[wgtypes.Key][]netip.Prefix{})
	for _, k := range []wgtypes.Key{a, b} {
		if err := tn.load(tn.table.Load().byKey[k], time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	check(v1, v1)

	v2 := map[wgtypes.Key][]netip.Prefix{a: {pfx("fdaa::200/120")}, c: {pfx("fdaa::400/120")}}
	set(v2)
	check(v2, map[wgtypes.Key][]netip.Prefix{a: {pfx("fdaa::200/120")}})
	if ls := tn.Loads(); ls.Configured != 2 || ls.Loaded != 1 || ls.Loads != 2 {
		t.Errorf("Loads() = %+v, want 2 configured, 1 loaded, 2 loads", ls)
	}
	set(nil)
	check(map[wgtypes.Key][]netip.Prefix{}, map[wgtypes.Key][]netip.Prefix{})
}
