package gateway

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	mdns "github.com/miekg/dns"
)

// randomProbes are probes of every protocol to n random addresses in p, a
// /48 the prober must not reach.
func randomProbes(rng *rand.Rand, p netip.Prefix, n int, why string) []probe {
	var out []probe
	for range n {
		a := p.Addr().As16()
		for i := 6; i < 16; i++ {
			a[i] = byte(rng.IntN(256))
		}
		addr := netip.AddrFrom16(a)
		port := uint16(1 + rng.IntN(65535))
		out = append(out,
			probe{"tcp", netip.AddrPortFrom(addr, port), why},
			probe{"udp", netip.AddrPortFrom(addr, port), why},
			probe{"icmp", netip.AddrPortFrom(addr, 0), why})
	}
	return out
}

// namedProbes are probes of the addresses of a network that do answer its
// own peers: resolver (DNS on UDP and TCP, the tunnel API, ping), the app's
// Flycast address, its machines' 6PN addresses, and a peer.
func namedProbes(prefix netip.Prefix, flycast netip.Addr, ms []store.Machine, peer netip.Addr) []probe {
	res := peers.Resolver(prefix)
	ps := []probe{
		{"udp", netip.AddrPortFrom(res, 53), "resolver DNS"},
		{"tcp", netip.AddrPortFrom(res, 53), "resolver DNS over TCP"},
		{"tcp", netip.AddrPortFrom(res, TunnelAPIPort), "_api.internal"},
		{"icmp", netip.AddrPortFrom(res, 0), "resolver ping"},
		{"udp", netip.AddrPortFrom(peer, 53), "a peer"},
		{"icmp", netip.AddrPortFrom(peer, 0), "a peer"},
	}
	if flycast.IsValid() {
		ps = append(ps,
			probe{"tcp", netip.AddrPortFrom(flycast, 80), "Flycast"},
			probe{"icmp", netip.AddrPortFrom(flycast, 0), "Flycast ping"})
	}
	for _, m := range ms {
		ps = append(ps, probe{"tcp", netip.AddrPortFrom(m.Address, 80), "machine " + m.ID})
	}
	return ps
}

// TestIsolation is issue 7's isolation property: peers of another
// organization, and of another network of the same organization, route the
// whole of fdaa::/16 to the gateway and send TCP, UDP and ICMP to random and
// to well-known addresses of a network that is not theirs. Nothing answers,
// and every packet is counted as dropped across networks.
func TestIsolation(t *testing.T) {
	h := newHarness(t)
	ctx := h.ctx()
	res := h.launch("hello", "")
	victimCfg := h.peer("personal", "laptop")
	victim := h.dial(victimCfg)
	victimNet := victimCfg.Peers[0].AllowedIPs[0]
	flycastIP := res.IPs[0].Address

	// Positive control: the victim's own peer gets answers from the same
	// probes, so silence below means isolation, not a broken probe.
	own := namedProbes(victimNet, flycastIP, res.Machines, victimCfg.Interface.Addresses[0].Addr())
	own = own[:4] // resolver probes; the peer itself is not a server
	own = append(own, probe{"tcp", netip.AddrPortFrom(flycastIP, 80), "Flycast"})
	if got := runProbes(victim, own); len(got) != len(own) {
		t.Fatalf("control: the network's own peer got %d answers from %d probes: %v", len(got), len(own), got)
	}

	if _, err := h.api.CreateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.g.Store().CreateNetwork(ctx, "personal", "staging"); err != nil {
		t.Fatal(err)
	}
	everything := netip.MustParsePrefix("fdaa::/16")
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	for _, tc := range []struct{ org, network string }{
		{"acme", "default"},     // another organization
		{"personal", "staging"}, // another network of the same organization
	} {
		t.Run(tc.org+"/"+tc.network, func(t *testing.T) {
			cfg := h.peerIn(tc.org, tc.network, "intruder-"+tc.network)
			cfg.Peers[0].AllowedIPs = append(cfg.Peers[0].AllowedIPs, everything)
			c := h.dial(cfg)
			// It is connected: its own resolver answers it.
			if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); !strings.HasPrefix(got, "intruder") {
				t.Fatalf("intruder's own _peer.internal = %q", got)
			}
			ps := namedProbes(victimNet, flycastIP, res.Machines, victimCfg.Interface.Addresses[0].Addr())
			ps = append(ps, randomProbes(rng, victimNet, 20, "random in the victim's /48")...)
			before := h.g.NetstackStats().DroppedCrossNetwork
			if got := runProbes(c, ps); len(got) > 0 {
				for p, what := range got {
					t.Errorf("%s/%s peer got an answer from %s: %s", tc.org, tc.network, p, what)
				}
			}
			dropped := h.g.NetstackStats().DroppedCrossNetwork - before
			if dropped < uint64(len(ps)) {
				t.Errorf("DroppedCrossNetwork grew by %d for %d probes; want at least one per probe", dropped, len(ps))
			}
			t.Logf("%d probes to another network: none answered, %d packets dropped as cross-network", len(ps), dropped)
		})
	}
}

// TestIsolationDNS asks every kind of private name from a peer of each of
// two networks: each is answered only from the asker's own network.
func TestIsolationDNS(t *testing.T) {
	h := newHarness(t)
	ctx := h.ctx()
	res := h.launch("hello", "")
	if _, err := h.api.CreateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	acmeApp := helloConfig("widget")
	if _, err := h.api.CreateApp(ctx, api.CreateAppRequest{Name: "widget", Org: "acme", Flycast: true, Config: acmeApp}); err != nil {
		t.Fatal(err)
	}
	wres, err := h.api.Deploy(ctx, "widget", api.DeployRequest{Config: acmeApp})
	if err != nil {
		t.Fatal(err)
	}
	mine := h.dial(h.peer("personal", "laptop"))
	theirs := h.dial(h.peer("acme", "phone"))
	m := res.Machines[0]
	wm := wres.Machines[0]
	for _, tc := range []struct {
		name  string
		qtype uint16
	}{
		{"hello.flycast", mdns.TypeAAAA},
		{"hello.internal", mdns.TypeAAAA},
		{"global.hello.internal", mdns.TypeAAAA},
		{"local.hello.internal", mdns.TypeAAAA},
		{"top1.nearest.of.hello.internal", mdns.TypeAAAA},
		{m.ID + ".vm.hello.internal", mdns.TypeAAAA},
		{"vms.hello.internal", mdns.TypeTXT},
		{"regions.hello.internal", mdns.TypeTXT},
		{"laptop._peer.internal", mdns.TypeAAAA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := query(t, mine, tc.name, tc.qtype); r.Rcode != mdns.RcodeSuccess || len(r.Answer) == 0 {
				t.Errorf("own network: %s %s = %s %v, want an answer", tc.name, mdns.TypeToString[tc.qtype], mdns.RcodeToString[r.Rcode], r.Answer)
			}
			if r := query(t, theirs, tc.name, tc.qtype); r.Rcode != mdns.RcodeNameError || len(r.Answer) != 0 {
				t.Errorf("other organization: %s %s = %s %v, want NXDOMAIN and nothing", tc.name, mdns.TypeToString[tc.qtype], mdns.RcodeToString[r.Rcode], r.Answer)
			}
		})
	}
	// Listings name only the asker's own records.
	for _, tc := range []struct {
		c          *client.Client
		name, want string
	}{
		{mine, "_apps.internal", "hello"},
		{theirs, "_apps.internal", "widget"},
		{mine, "_peer.internal", "laptop"},
		{theirs, "_peer.internal", "phone"},
	} {
		if got := txt(query(t, tc.c, tc.name, mdns.TypeTXT)); got != tc.want {
			t.Errorf("%s from %s = %q, want %q", tc.name, tc.want, got, tc.want)
		}
	}
	inst := txt(query(t, mine, "_instances.internal", mdns.TypeTXT))
	if strings.Contains(inst, wm.ID) || !strings.Contains(inst, m.ID) {
		t.Errorf("_instances.internal for personal = %q; want %s and not acme's %s", inst, m.ID, wm.ID)
	}
}

// TestIsolationOrgIP: an address allocated for another organization
// (`ips allocate-v6 --private --org acme`) lies in acme's /48. acme's peer
// reaches the app through it; personal's own peer cannot, and acme's peer
// cannot use the app's personal Flycast address.
func TestIsolationOrgIP(t *testing.T) {
	h := newHarness(t)
	ctx := h.ctx()
	res := h.launch("hello", "")
	if _, err := h.api.CreateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	shared, err := h.api.AllocateIP(ctx, "hello", api.AllocateIPRequest{Org: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	acmeCfg := h.peer("acme", "phone")
	acmeNet := acmeCfg.Peers[0].AllowedIPs[0]
	if !acmeNet.Contains(shared.Address) || shared.Org != "acme" {
		t.Fatalf("address for acme %s (org %q) is not in acme's %s", shared.Address, shared.Org, acmeNet)
	}
	acmeCfg.Peers[0].AllowedIPs = append(acmeCfg.Peers[0].AllowedIPs, netip.MustParsePrefix("fdaa::/16"))
	acme := h.dial(acmeCfg)
	mineCfg := h.peer("personal", "laptop")
	mineCfg.Peers[0].AllowedIPs = append(mineCfg.Peers[0].AllowedIPs, netip.MustParsePrefix("fdaa::/16"))
	mine := h.dial(mineCfg)

	if resp, body := get(t, acme, "http://["+shared.Address.String()+"]/"); resp.StatusCode != 200 || !strings.Contains(body, "Hello from") {
		t.Errorf("acme via its address: %s %q", resp.Status, body)
	}
	if got := aaaa(query(t, acme, "hello.flycast", mdns.TypeAAAA)); len(got) > 1 || (len(got) == 1 && got[0] != shared.Address) {
		t.Errorf("acme's hello.flycast = %v; want at most acme's own %s", got, shared.Address)
	}
	before := h.g.NetstackStats().DroppedCrossNetwork
	ps := []probe{
		{"tcp", netip.AddrPortFrom(res.IPs[0].Address, 80), "hello's personal Flycast address, from acme"},
	}
	if got := runProbes(acme, ps); len(got) > 0 {
		t.Errorf("acme reached hello's personal address: %v", got)
	}
	if got := runProbes(mine, []probe{{"tcp", netip.AddrPortFrom(shared.Address, 80), "acme's address, from personal"}}); len(got) > 0 {
		t.Errorf("personal reached the address allocated in acme: %v", got)
	}
	if d := h.g.NetstackStats().DroppedCrossNetwork - before; d < 2 {
		t.Errorf("DroppedCrossNetwork grew by %d, want at least 2", d)
	}
}

// TestIsolationForgedSource: a peer that puts another peer's address (in
// the same /48, even the same organization) on its interface gets nothing:
// wireguard-go drops packets whose source is outside the sender's
// AllowedIPs, before they reach the netstack.
func TestIsolationForgedSource(t *testing.T) {
	h := newHarness(t)
	h.launch("hello", "")
	victimCfg := h.peer("personal", "victim")
	victim := h.dial(victimCfg)
	if got := txt(query(t, victim, "_peer.internal", mdns.TypeTXT)); got != "victim" {
		t.Fatalf("victim's _peer.internal = %q", got)
	}
	forger := h.peer("personal", "forger")
	netw := forger.Peers[0].AllowedIPs[0]
	for _, tc := range []struct {
		name string
		addr netip.Addr
	}{
		{"victim's address", victimCfg.Interface.Addresses[0].Addr()},
		{"an unassigned /120", nextPrefix120(forger.Interface.Addresses[0].Addr())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := *forger
			cfg.Interface.Addresses = []netip.Prefix{netip.PrefixFrom(tc.addr, 128)}
			c := h.dial(&cfg)
			ps := []probe{
				{"udp", netip.AddrPortFrom(peers.Resolver(netw), 53), "resolver"},
				{"tcp", netip.AddrPortFrom(peers.Resolver(netw), 53), "resolver TCP"},
				{"icmp", netip.AddrPortFrom(peers.Resolver(netw), 0), "resolver ping"},
			}
			if got := runProbes(c, ps); len(got) > 0 {
				t.Errorf("forged source %s got answers: %v", tc.addr, got)
			}
		})
	}
	// The victim is unaffected.
	if got := txt(query(t, victim, "_peer.internal", mdns.TypeTXT)); got != "forger,victim" {
		t.Errorf("victim after forgery: _peer.internal = %q", got)
	}
}

// nextPrefix120 is an address in the /120 after a's, same /48.
func nextPrefix120(a netip.Addr) netip.Addr {
	b := a.As16()
	b[14]++
	return netip.AddrFrom16(b)
}

// TestTunnelAPI: _api.internal (<prefix>::3:4280) serves each organization
// its own records, read-only; another organization's peer cannot reach it.
func TestTunnelAPI(t *testing.T) {
	h := newHarness(t)
	ctx := h.ctx()
	h.launch("hello", "")
	if _, err := h.api.CreateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	cfgW := helloConfig("widget")
	if _, err := h.api.CreateApp(ctx, api.CreateAppRequest{Name: "widget", Org: "acme", Flycast: true, Config: cfgW}); err != nil {
		t.Fatal(err)
	}
	mineCfg := h.peer("personal", "laptop")
	mine := h.dial(mineCfg)
	acmeCfg := h.peer("acme", "phone")
	acmeCfg.Peers[0].AllowedIPs = append(acmeCfg.Peers[0].AllowedIPs, netip.MustParsePrefix("fdaa::/16"))
	acme := h.dial(acmeCfg)

	apps := func(c *client.Client, host string) []string {
		t.Helper()
		resp, body := get(t, c, "http://"+host+":4280/v1/apps")
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s/v1/apps: %s %s", host, resp.Status, body)
		}
		var as []store.App
		if err := json.Unmarshal([]byte(body), &as); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, a := range as {
			names = append(names, a.Name)
		}
		return names
	}
	if got := apps(mine, "_api.internal"); strings.Join(got, ",") != "hello" {
		t.Errorf("personal's _api.internal apps = %v, want [hello]", got)
	}
	if got := apps(acme, "_api.internal"); strings.Join(got, ",") != "widget" {
		t.Errorf("acme's _api.internal apps = %v, want [widget]", got)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/v1/apps/hello/ips", 200},
		{"GET", "/v1/apps/hello/machines", 200},
		{"GET", "/v1/peers", 200},
		{"GET", "/v1/apps/widget", 404}, // acme's: not confirmed to exist
		{"GET", "/v1/apps/widget/ips", 404},
		{"GET", "/v1/peers?org=acme", 403},
		{"GET", "/v1/orgs", 403},
		{"GET", "/v1/status", 403},
		{"POST", "/v1/apps", 403},
		{"DELETE", "/v1/apps/hello", 403},
		{"POST", "/v1/peers", 403},
		{"POST", "/v1/machines/x/stop", 403},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, "http://_api.internal:4280"+tc.path, strings.NewReader("{}"))
		req.Close = true
		resp, err := mine.HTTPClient().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, resp.StatusCode, body, tc.want)
		}
		if tc.want == 403 && !strings.Contains(string(body), "read-only") && !strings.Contains(string(body), "only organization") {
			t.Errorf("%s %s: 403 without a clear message: %s", tc.method, tc.path, body)
		}
		if !strings.Contains(tc.path, "widget") && strings.Contains(string(body), "widget") || strings.Contains(string(body), "phone") {
			t.Errorf("%s %s leaked acme's records: %s", tc.method, tc.path, body)
		}
	}
	// Nothing changed through it.
	if _, err := h.api.GetApp(ctx, "hello"); err != nil {
		t.Errorf("hello after DELETE through the tunnel API: %v", err)
	}
	// acme cannot reach personal's API address.
	target := netip.AddrPortFrom(peers.Resolver(mineCfg.Peers[0].AllowedIPs[0]), TunnelAPIPort)
	if got := runProbes(acme, []probe{{"tcp", target, "personal's _api.internal"}}); len(got) > 0 {
		t.Errorf("acme reached personal's API: %v", got)
	}
}
