package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
)

func ip(a netip.Addr) string { return a.String() }

func machineAddr(n uint32, p netip.Prefix) string { return mustMachine(p, n).String() }

// TestPrivateNames asks every private name over real UDP from a peer of
// each network and checks rcode, answers, authority and TTL.
func TestPrivateNames(t *testing.T) {
	ts := startServer(t, Config{})
	id := machineID
	m1, m2 := machineAddr(1, prefixA), machineAddr(2, prefixA)
	m6, m7 := machineAddr(6, prefixB), machineAddr(7, prefixB)
	type tc struct {
		name  string
		src   netip.Addr
		qname string
		qtype uint16
		rcode int
		want  []string // rdata in order; nil means no answers
	}
	const (
		AAAA, TXT, A, SOA, ANY = mdns.TypeAAAA, mdns.TypeTXT, mdns.TypeA, mdns.TypeSOA, mdns.TypeANY
		ok, nx                 = mdns.RcodeSuccess, mdns.RcodeNameError
	)
	cases := []tc{
		// .flycast
		{"flycast own app", srcA, "hello.flycast", AAAA, ok, []string{ip(helloFlycast)}},
		{"flycast case-insensitive", srcA, "HeLLo.FlyCast", AAAA, ok, []string{ip(helloFlycast)}},
		{"flycast all machines stopped", srcA, "web.flycast", AAAA, ok, []string{ip(webFlycast)}},
		{"flycast app of B exposed into A", srcA, "secret.flycast", AAAA, ok, []string{ip(secretFlycast)}},
		{"flycast app of B not exposed", srcA, "bapp.flycast", AAAA, nx, nil},
		{"flycast unknown", srcA, "nope.flycast", AAAA, nx, nil},
		{"flycast other type", srcA, "hello.flycast", TXT, ok, nil},
		{"flycast A of v6-only", srcA, "hello.flycast", A, ok, nil},
		{"flycast ANY", srcA, "hello.flycast", ANY, ok, []string{ip(helloFlycast)}},
		{"flycast too deep", srcA, "x.hello.flycast", AAAA, nx, nil},
		{"flycast B own", srcB, "bapp.flycast", AAAA, ok, []string{ip(bappFlycast)}},
		{"flycast B app exposed elsewhere only", srcB, "secret.flycast", AAAA, ok, nil},
		{"flycast A's app from B", srcB, "hello.flycast", AAAA, nx, nil},

		// .internal, machines
		{"app started only", srcA, "hello.internal", AAAA, ok, []string{m1, m2}},
		{"global", srcA, "global.hello.internal", AAAA, ok, []string{m1, m2}},
		{"region", srcA, "ams.hello.internal", AAAA, ok, []string{m1}},
		{"region stopped only", srcA, "sjc.hello.internal", AAAA, ok, nil},
		{"region unknown", srcA, "xyz.hello.internal", AAAA, nx, nil},
		{"top1 nearest is gateway region", srcA, "top1.nearest.of.hello.internal", AAAA, ok, []string{m2}},
		{"top2 nearest", srcA, "top2.nearest.of.hello.internal", AAAA, ok, []string{m2, m1}},
		{"top9 capped at started", srcA, "top9.nearest.of.hello.internal", AAAA, ok, []string{m2, m1}},
		{"top0", srcA, "top0.nearest.of.hello.internal", AAAA, nx, nil},
		{"topx", srcA, "topx.nearest.of.hello.internal", AAAA, nx, nil},
		{"nearest.of non-terminal", srcA, "nearest.of.hello.internal", AAAA, ok, nil},
		{"vm started", srcA, id(1) + ".vm.hello.internal", AAAA, ok, []string{m1}},
		{"vm stopped exists", srcA, id(3) + ".vm.hello.internal", AAAA, ok, nil},
		{"vm of another app", srcA, id(6) + ".vm.hello.internal", AAAA, nx, nil},
		{"vm non-terminal", srcA, "vm.hello.internal", AAAA, ok, nil},
		{"app all stopped", srcA, "web.internal", AAAA, ok, nil},
		{"app other type", srcA, "hello.internal", TXT, ok, nil},
		{"B's app from A", srcA, "secret.internal", AAAA, nx, nil},
		{"B's app global from A", srcA, "global.bapp.internal", AAAA, nx, nil},
		{"B's vm from A", srcA, id(7) + ".vm.bapp.internal", AAAA, nx, nil},
		{"B own app", srcB, "secret.internal", AAAA, ok, []string{m6}},
		{"A's app from B", srcB, "hello.internal", AAAA, nx, nil},
		{"too deep", srcA, "a.b.c.d.e.internal", AAAA, nx, nil},
		{"unknown app", srcA, "nope.internal", AAAA, nx, nil},

		// peers and the API
		{"peer", srcA, "alice._peer.internal", AAAA, ok, []string{mustPeer(prefixA, 1).String()}},
		{"peer of B from A", srcA, "bob._peer.internal", AAAA, nx, nil},
		{"peer B", srcB, "bob._peer.internal", AAAA, ok, []string{mustPeer(prefixB, 1).String()}},
		{"api A", srcA, "_api.internal", AAAA, ok, []string{peers.Resolver(prefixA).String()}},
		{"api B", srcB, "_api.internal", AAAA, ok, []string{peers.Resolver(prefixB).String()}},
		{"api TXT", srcA, "_api.internal", TXT, ok, nil},

		// TXT listings
		{"apps A", srcA, "_apps.internal", TXT, ok, []string{"big,hello,web"}},
		{"apps B", srcB, "_apps.internal", TXT, ok, []string{"bapp,secret"}},
		{"apps AAAA", srcA, "_apps.internal", AAAA, ok, nil},
		{"vms", srcA, "vms.hello.internal", TXT, ok, []string{id(1) + " ams," + id(2) + " fra"}},
		{"vms all stopped", srcA, "vms.web.internal", TXT, ok, []string{""}},
		{"regions", srcA, "regions.hello.internal", TXT, ok, []string{"ams,fra"}},
		{"peers A", srcA, "_peer.internal", TXT, ok, []string{"alice,carol"}},
		{"peers B", srcB, "_peer.internal", TXT, ok, []string{"bob"}},
		{"instances B", srcB, "_instances.internal", TXT, ok, []string{
			"instance=" + id(7) + ",app=bapp,ip=" + m7 + ",region=ord;" +
				"instance=" + id(6) + ",app=secret,ip=" + m6 + ",region=ord"}},
		{"vms of B's app from A", srcA, "vms.secret.internal", TXT, nx, nil},

		// zone apexes
		{"internal apex SOA", srcA, "internal", SOA, ok, []string{"SOA"}},
		{"flycast apex AAAA", srcA, "flycast", AAAA, ok, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := query(t, ts.udpAddr, "udp", c.src, c.qname, c.qtype, 0)
			if r.Rcode != c.rcode {
				t.Fatalf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[c.rcode])
			}
			if !r.Authoritative {
				t.Error("private answer not authoritative")
			}
			got := rdata(r.Answer)
			if len(c.want) == 1 && c.want[0] == "SOA" {
				if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != mdns.TypeSOA {
					t.Fatalf("answer %v, want the SOA", r.Answer)
				}
				return
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("answers %q, want %q", got, c.want)
			}
			if len(r.Answer) == 0 && (len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != mdns.TypeSOA) {
				t.Errorf("negative answer without SOA in authority: %v", r.Ns)
			}
			wantTTL := uint32(InternalTTL)
			if strings.HasSuffix(strings.ToLower(c.qname), "flycast") {
				wantTTL = FlycastTTL
			}
			for _, rr := range r.Answer {
				if rr.Header().Ttl != wantTTL {
					t.Errorf("%v: TTL %d, want %d", rr, rr.Header().Ttl, wantTTL)
				}
				if rr.Header().Name != mdns.Fqdn(c.qname) {
					t.Errorf("owner %q, want the name as asked %q", rr.Header().Name, mdns.Fqdn(c.qname))
				}
			}
		})
	}
}

// TestAnswerNotPrivate: Answer returns nil for names it must forward,
// including look-alikes.
func TestAnswerNotPrivate(t *testing.T) {
	s := New(Config{Snapshot: fixtureSnapshot})
	for _, name := range []string{"example.com.", "internal.example.", "flycast.net.", `foo\.internal.`, "."} {
		q := new(mdns.Msg).SetQuestion(name, mdns.TypeAAAA)
		if r := s.Answer(netA, q); r != nil {
			t.Errorf("%s: answered %v, want nil (forward)", name, r)
		}
	}
	for _, name := range []string{`foo\\.internal.`, "hello.flycast."} {
		q := new(mdns.Msg).SetQuestion(name, mdns.TypeAAAA)
		if r := s.Answer(netA, q); r == nil {
			t.Errorf("%s: nil, want a private answer", name)
		}
	}
	if r := s.Answer(netA, new(mdns.Msg)); r != nil {
		t.Errorf("no question: answered %v", r)
	}
	// Another class for a private name is refused, never forwarded.
	q := new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	q.Question[0].Qclass = mdns.ClassCHAOS
	if r := s.Answer(netA, q); r == nil || r.Rcode != mdns.RcodeRefused {
		t.Errorf("CHAOS class: %v, want REFUSED", r)
	}
	// An unknown network sees nothing.
	q = new(mdns.Msg).SetQuestion("hello.flycast.", mdns.TypeAAAA)
	if r := s.Answer(store.NetworkKey{Org: "x", Network: "y"}, q); r == nil || r.Rcode != mdns.RcodeNameError {
		t.Errorf("unknown network: %v, want NXDOMAIN", r)
	}
}

// TestTXTSplit: a TXT listing longer than 255 bytes is split into
// character-strings of at most 255 bytes whose concatenation is the listing.
func TestTXTSplit(t *testing.T) {
	s := New(Config{Snapshot: fixtureSnapshot})
	q := new(mdns.Msg).SetQuestion("vms.big.internal.", mdns.TypeTXT)
	r := s.Answer(netA, q)
	if r == nil || len(r.Answer) != 1 {
		t.Fatalf("reply %v", r)
	}
	txt := r.Answer[0].(*mdns.TXT)
	if len(txt.Txt) < 2 {
		t.Fatalf("%d strings, want a split listing", len(txt.Txt))
	}
	var want []string
	for i := 0; i < 40; i++ {
		want = append(want, machineID(100+i)+" iad")
	}
	for _, s := range txt.Txt {
		if len(s) > 255 {
			t.Errorf("string of %d bytes", len(s))
		}
	}
	if got := strings.Join(txt.Txt, ""); got != strings.Join(want, ",") {
		t.Errorf("listing %q", got)
	}
}

// TestDefaultNetworkFor: by default the asker's network is the one whose /48
// holds its source address.
func TestDefaultNetworkFor(t *testing.T) {
	s := New(Config{Snapshot: fixtureSnapshot})
	for _, c := range []struct {
		addr string
		want store.NetworkKey
		ok   bool
	}{
		{"[" + mustPeer(prefixA, 1).String() + "]:5353", netA, true},
		{"[" + mustPeer(prefixB, 1).String() + "]:5353", netB, true},
		{"[fdaa:0:99::1]:53", store.NetworkKey{}, false},
		{"127.0.0.1:53", store.NetworkKey{}, false},
	} {
		ap := netip.MustParseAddrPort(c.addr)
		k, ok := s.cfg.NetworkFor(netUDPAddr(ap))
		if k != c.want || ok != c.ok {
			t.Errorf("%s: %v %v, want %v %v", c.addr, k, ok, c.want, c.ok)
		}
		k, ok = s.cfg.NetworkFor(netTCPAddr(ap))
		if k != c.want || ok != c.ok {
			t.Errorf("tcp %s: %v %v, want %v %v", c.addr, k, ok, c.want, c.ok)
		}
	}
}
