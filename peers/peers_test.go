package peers

import (
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestAddresses(t *testing.T) {
	p := NetworkPrefix(0x39018)
	if got, want := p.String(), "fdaa:3:9018::/48"; got != want {
		t.Fatalf("NetworkPrefix = %s, want %s", got, want)
	}
	if got, want := Resolver(p).String(), "fdaa:3:9018::3"; got != want {
		t.Errorf("Resolver = %s, want %s", got, want)
	}
	fc := Flycast(p, 7)
	if got, want := fc.String(), "fdaa:3:9018:0:1::7"; got != want {
		t.Errorf("Flycast = %s, want %s", got, want)
	}
	if !IsFlycast(fc) || IsFlycast(Resolver(p)) {
		t.Errorf("IsFlycast wrong")
	}
	pa, err := Peer(p, 0x8c2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pa.String(), "fdaa:3:9018:a7b:8c2:0:a:102"; got != want {
		t.Errorf("Peer = %s, want %s", got, want)
	}
	pb, _ := Peer(p, 0x8c2, 256+3)
	if got, want := pb.String(), "fdaa:3:9018:a7b:8c2:1:a:302"; got != want {
		t.Errorf("Peer(259) = %s, want %s", got, want)
	}
	if _, err := Peer(p, 1, 0); err == nil {
		t.Errorf("Peer(0) succeeded")
	}
	if _, err := Peer(p, 1, MaxPeerNumber+1); err == nil {
		t.Errorf("Peer(max+1) succeeded")
	}
	m, err := Machine(p, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.String(), "fdaa:3:9018:a7b:b001:0:5:2"; got != want {
		t.Errorf("Machine = %s, want %s", got, want)
	}
	// Distinct kinds never collide and all lie in the network.
	seen := map[netip.Addr]bool{}
	for _, a := range []netip.Addr{Resolver(p), fc, pa, pb, m} {
		if seen[a] {
			t.Errorf("duplicate %s", a)
		}
		seen[a] = true
		if !p.Contains(a) || !SameNetwork(a, Resolver(p)) {
			t.Errorf("%s not in %s", a, p)
		}
	}
	if SameNetwork(Resolver(p), Resolver(NetworkPrefix(2))) {
		t.Errorf("different /48s reported as the same network")
	}
	if SameNetwork(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("IPv4 reported as a network")
	}
}

func TestConfigRoundTrip(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	gw, _ := wgtypes.GeneratePrivateKey()
	net := NetworkPrefix(0x39018)
	addr, _ := Peer(net, 1, 1)
	c := ClientConfig(priv, gw.PublicKey(), addr, net, "gw.example:51820")
	text := string(c.Render())
	want := "[Interface]\nPrivateKey = " + priv.String() + "\nAddress = fdaa:3:9018:a7b:1:0:a:102/120\nDNS = fdaa:3:9018::3\n\n" +
		"[Peer]\nPublicKey = " + gw.PublicKey().String() + "\nAllowedIPs = fdaa:3:9018::/48\nEndpoint = gw.example:51820\nPersistentKeepalive = 15\n"
	if text != want {
		t.Fatalf("Render:\n%s\nwant:\n%s", text, want)
	}
	back, err := ParseConfig("laptop.conf", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if string(back.Render()) != text {
		t.Errorf("round trip differs:\n%s", back.Render())
	}
}

func TestParseConfigErrors(t *testing.T) {
	key, _ := wgtypes.GeneratePrivateKey()
	k := key.String()
	for _, tc := range []struct{ name, in, want string }{
		{"no interface", "[Peer]\nPublicKey = " + k + "\nAllowedIPs = ::/0\n", "no [Interface]"},
		{"no key", "[Interface]\nAddress = fdaa::2/120\n", "no PrivateKey"},
		{"bad key", "[Interface]\nPrivateKey = nope\n", "c.conf:2: PrivateKey"},
		{"bad address", "[Interface]\nPrivateKey = " + k + "\nAddress = fdaa::zz/120\n", "c.conf:3: Address"},
		{"bad endpoint", "[Interface]\nPrivateKey = " + k + "\n[Peer]\nPublicKey = " + k + "\nEndpoint = host\n", "c.conf:5: Endpoint"},
		{"unknown key", "[Interface]\nPrivateKey = " + k + "\nColour = blue\n", `c.conf:3: unknown key "colour"`},
		{"unknown section", "[Interfaces]\n", "c.conf:1: unknown section"},
		{"no equals", "[Interface]\nPrivateKey\n", "c.conf:2: expected"},
		{"peer without key", "[Interface]\nPrivateKey = " + k + "\n[Peer]\nAllowedIPs = ::/0\n", "has no PublicKey"},
		{"two interfaces", "[Interface]\nPrivateKey = " + k + "\n[Interface]\n", "second [Interface]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("c.conf", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want containing %q", err, tc.want)
			}
		})
	}
	// wg-quick-only keys and comments are accepted.
	ok := "# laptop\n[Interface]\nPrivateKey = " + k + " # secret\nPostUp = echo hi\nTable = off\n"
	if _, err := ParseConfig("c.conf", []byte(ok)); err != nil {
		t.Fatalf("wg-quick keys rejected: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	key, _ := wgtypes.GeneratePrivateKey()
	f.Add([]byte("[Interface]\nPrivateKey = " + key.String() + "\nAddress = fdaa:0:1:a7b:1:0:a:102/120\nDNS = fdaa:0:1::3\n\n[Peer]\nPublicKey = " + key.PublicKey().String() + "\nAllowedIPs = fdaa:0:1::/48\nEndpoint = [::1]:51820\nPersistentKeepalive = 15\n"))
	f.Add([]byte("[Peer]\n"))
	f.Add([]byte("=\n[\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("f.conf", data)
		if err != nil {
			return
		}
		// Whatever parses renders, and the rendering parses to the same.
		again, err := ParseConfig("f.conf", c.Render())
		if err != nil {
			t.Fatalf("rendered config does not parse: %v\n%s", err, c.Render())
		}
		if string(again.Render()) != string(c.Render()) {
			t.Fatalf("render not stable")
		}
	})
}
