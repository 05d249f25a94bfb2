package peers

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// MaxConfigSize bounds a wg-quick file we are willing to read. Real files are
// a few hundred bytes; this leaves room for many peers and comments.
const MaxConfigSize = 1 << 20

// DefaultKeepalive is the PersistentKeepalive flyctl writes: it keeps NAT
// mappings open so the gateway can reach a laptop that is behind one.
const DefaultKeepalive = 15

// Config is a wg-quick file: one [Interface] and its [Peer]s.
type Config struct {
	Interface Interface
	Peers     []PeerSection
}

// Interface is the [Interface] section.
type Interface struct {
	PrivateKey wgtypes.Key
	Addresses  []netip.Prefix
	DNS        []netip.Addr
	// DNSSearch holds DNS= entries that are not addresses (search domains).
	DNSSearch  []string
	ListenPort int
	MTU        int
}

// PeerSection is one [Peer] section.
type PeerSection struct {
	PublicKey           wgtypes.Key
	PresharedKey        *wgtypes.Key
	AllowedIPs          []netip.Prefix
	Endpoint            string
	PersistentKeepalive int
}

// Render writes the config in the exact shape flyctl writes, so a file from
// devgate and one from `fly wireguard create` look alike.
func (c *Config) Render() []byte {
	var b bytes.Buffer
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", c.Interface.PrivateKey)
	if len(c.Interface.Addresses) > 0 {
		fmt.Fprintf(&b, "Address = %s\n", joinStrings(c.Interface.Addresses))
	}
	if len(c.Interface.DNS)+len(c.Interface.DNSSearch) > 0 {
		dns := make([]string, 0, len(c.Interface.DNS)+len(c.Interface.DNSSearch))
		for _, a := range c.Interface.DNS {
			dns = append(dns, a.String())
		}
		dns = append(dns, c.Interface.DNSSearch...)
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(dns, ", "))
	}
	if c.Interface.ListenPort != 0 {
		fmt.Fprintf(&b, "ListenPort = %d\n", c.Interface.ListenPort)
	}
	if c.Interface.MTU != 0 {
		fmt.Fprintf(&b, "MTU = %d\n", c.Interface.MTU)
	}
	for _, p := range c.Peers {
		b.WriteString("\n[Peer]\n")
		fmt.Fprintf(&b, "PublicKey = %s\n", p.PublicKey)
		if p.PresharedKey != nil {
			fmt.Fprintf(&b, "PresharedKey = %s\n", *p.PresharedKey)
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", joinStrings(p.AllowedIPs))
		if p.Endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\n", p.Endpoint)
		}
		if p.PersistentKeepalive != 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", p.PersistentKeepalive)
		}
	}
	return b.Bytes()
}

func joinStrings[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

// wgQuickOnly are keys wg-quick itself acts on and a userspace client can
// ignore: they configure the host, not the tunnel.
var wgQuickOnly = map[string]bool{
	"table": true, "preup": true, "postup": true, "predown": true, "postdown": true,
	"saveconfig": true, "fwmark": true,
}

// ParseConfig reads a wg-quick file. Errors name the file and line and say
// what was expected. Keys are case-insensitive, as in wg-quick.
func ParseConfig(filename string, data []byte) (*Config, error) {
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("%s: file is %d bytes, larger than the %d a WireGuard config can be; is this the right file?", filename, len(data), MaxConfigSize)
	}
	var (
		c       Config
		section string
		sawIf   bool
		sawKey  bool
		cur     *PeerSection
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxConfigSize)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", filename, line, fmt.Sprintf(format, args...))
		}
		if strings.HasPrefix(text, "[") {
			switch strings.ToLower(text) {
			case "[interface]":
				if sawIf {
					return nil, fail("a second [Interface] section; a config has exactly one")
				}
				sawIf, section, cur = true, "interface", nil
			case "[peer]":
				c.Peers = append(c.Peers, PeerSection{})
				section, cur = "peer", &c.Peers[len(c.Peers)-1]
			default:
				return nil, fail("unknown section %s; expected [Interface] or [Peer]", text)
			}
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fail("expected 'Key = Value', got %q", text)
		}
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		var err error
		switch section {
		case "":
			return nil, fail("%s appears before any [Interface] or [Peer] section", key)
		case "interface":
			err = c.Interface.set(key, val, &sawKey)
		case "peer":
			err = cur.set(key, val)
		}
		if err != nil {
			return nil, fail("%v", err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", filename, err)
	}
	if !sawIf {
		return nil, fmt.Errorf("%s: no [Interface] section; is this a WireGuard config?", filename)
	}
	if !sawKey {
		return nil, fmt.Errorf("%s: [Interface] has no PrivateKey", filename)
	}
	for i, p := range c.Peers {
		if p.PublicKey == (wgtypes.Key{}) {
			return nil, fmt.Errorf("%s: [Peer] number %d has no PublicKey", filename, i+1)
		}
	}
	return &c, nil
}

func (in *Interface) set(key, val string, sawKey *bool) error {
	switch key {
	case "privatekey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PrivateKey: not a WireGuard key (44 base64 characters): %v", err)
		}
		in.PrivateKey, *sawKey = k, true
	case "address":
		for _, s := range splitList(val) {
			p, err := parsePrefixOrAddr(s)
			if err != nil {
				return fmt.Errorf("Address: %v", err)
			}
			in.Addresses = append(in.Addresses, p)
		}
	case "dns":
		for _, s := range splitList(val) {
			if a, err := netip.ParseAddr(s); err == nil {
				in.DNS = append(in.DNS, a)
			} else {
				in.DNSSearch = append(in.DNSSearch, s)
			}
		}
	case "listenport":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("ListenPort: %q is not a port (0..65535)", val)
		}
		in.ListenPort = n
	case "mtu":
		n, err := strconv.Atoi(val)
		if err != nil || n < 1280 || n > 65535 {
			return fmt.Errorf("MTU: %q is not valid (1280..65535 for IPv6)", val)
		}
		in.MTU = n
	default:
		if !wgQuickOnly[key] {
			return fmt.Errorf("unknown key %q in [Interface]", key)
		}
	}
	return nil
}

func (p *PeerSection) set(key, val string) error {
	switch key {
	case "publickey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PublicKey: not a WireGuard key (44 base64 characters): %v", err)
		}
		p.PublicKey = k
	case "presharedkey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PresharedKey: not a WireGuard key: %v", err)
		}
		p.PresharedKey = &k
	case "allowedips":
		for _, s := range splitList(val) {
			pr, err := parsePrefixOrAddr(s)
			if err != nil {
				return fmt.Errorf("AllowedIPs: %v", err)
			}
			p.AllowedIPs = append(p.AllowedIPs, pr)
		}
	case "endpoint":
		if _, _, err := splitHostPort(val); err != nil {
			return fmt.Errorf("Endpoint: %v", err)
		}
		p.Endpoint = val
	case "persistentkeepalive":
		if val == "off" {
			p.PersistentKeepalive = 0
			return nil
		}
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("PersistentKeepalive: %q is not a number of seconds (0..65535) or off", val)
		}
		p.PersistentKeepalive = n
	default:
		return fmt.Errorf("unknown key %q in [Peer]", key)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address with a prefix length", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// splitHostPort accepts host:port and [v6]:port, as wg does.
func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return "", 0, fmt.Errorf("%q is not HOST:PORT", s)
	}
	host, ps := s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
		return "", 0, fmt.Errorf("%q: unbalanced brackets around the host", s)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port must be 1..65535", s)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%q: empty host", s)
	}
	return host, port, nil
}

// ClientConfig builds the wg-quick file a laptop gets, in flyctl's shape:
// the peer's own /120, the network's resolver as DNS, the network's /48
// routed through the gateway, and a 15 s keepalive.
func ClientConfig(priv, gateway wgtypes.Key, addr netip.Addr, network netip.Prefix, endpoint string) *Config {
	return &Config{
		Interface: Interface{
			PrivateKey: priv,
			Addresses:  []netip.Prefix{netip.PrefixFrom(addr, PeerPrefixLen)},
			DNS:        []netip.Addr{Resolver(network)},
		},
		Peers: []PeerSection{{
			PublicKey:           gateway,
			AllowedIPs:          []netip.Prefix{network.Masked()},
			Endpoint:            endpoint,
			PersistentKeepalive: DefaultKeepalive,
		}},
	}
}
