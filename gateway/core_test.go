package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/peers"
	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestCore walks issue 2's list through a real userspace WireGuard client:
// handshake, private and public DNS, ping, refusal, live add and remove,
// isolation between organizations, and a restart that keeps every peer.
func TestCore(t *testing.T) {
	checkGoroutines(t)
	h := newHarness(t)
	ctx := h.ctx()
	laptop := h.peer("personal", "laptop")
	c := h.dial(laptop)
	net := laptop.Peers[0].AllowedIPs[0]
	resolver := peers.Resolver(net)

	t.Run("peer DNS", func(t *testing.T) {
		if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
			t.Errorf("_peer.internal TXT = %q, want laptop", got)
		}
		addrs := aaaa(query(t, c, "laptop._peer.internal", mdns.TypeAAAA))
		if len(addrs) != 1 || addrs[0] != laptop.Interface.Addresses[0].Addr() {
			t.Errorf("laptop._peer.internal = %v, want %s", addrs, laptop.Interface.Addresses[0].Addr())
		}
		if addrs := aaaa(query(t, c, "_api.internal", mdns.TypeAAAA)); len(addrs) != 1 || addrs[0] != resolver {
			t.Errorf("_api.internal = %v, want %s", addrs, resolver)
		}
		if r := query(t, c, "nosuch.internal", mdns.TypeAAAA); r.Rcode != mdns.RcodeNameError {
			t.Errorf("nosuch.internal rcode = %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
		}
	})
	t.Run("public DNS is forwarded", func(t *testing.T) {
		r := query(t, c, "example.com", mdns.TypeA)
		if len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "192.0.2.7") {
			t.Errorf("example.com A = %v, want the upstream's 192.0.2.7", r.Answer)
		}
	})
	t.Run("ping the resolver", func(t *testing.T) {
		// Ping resends its echo until one is answered.
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := c.Ping(pctx, resolver); err != nil {
			t.Errorf("ping %s: %v", resolver, err)
		}
	})
	t.Run("TCP to nothing is refused", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := c.DialContext(dctx, "tcp", netip.AddrPortFrom(peers.Flycast(net, 999), 80).String())
		if err == nil {
			t.Fatal("dial to an address that does not exist succeeded")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !strings.Contains(err.Error(), "refused") {
			t.Errorf("dial error = %v, want connection refused (not a timeout)", err)
		}
	})
	t.Run("other organization is isolated", func(t *testing.T) {
		if _, err := h.api.CreateOrg(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		// The intruder edits its config to route every address to the
		// gateway, so its packets to personal's /48 do reach the gateway.
		intruder := h.peer("acme", "intruder")
		intruder.Peers[0].AllowedIPs = append(intruder.Peers[0].AllowedIPs, net)
		other := h.dial(intruder)
		// Its own resolver works...
		if got := txt(query(t, other, "_peer.internal", mdns.TypeTXT)); got != "intruder" {
			t.Errorf("acme's _peer.internal = %q, want only intruder", got)
		}
		// ...and personal's resolver address gets no answer at all.
		q := new(mdns.Msg)
		q.SetQuestion("_peer.internal.", mdns.TypeTXT)
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := other.DialContext(qctx, "udp", netip.AddrPortFrom(resolver, 53).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		dc := &mdns.Conn{Conn: conn}
		conn.SetDeadline(time.Now().Add(time.Second))
		if err := dc.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		if r, err := dc.ReadMsg(); err == nil {
			t.Errorf("acme peer got an answer from personal's resolver: %v", r)
		}
		if h.g.NetstackStats().DroppedCrossNetwork == 0 {
			t.Errorf("cross-network packet was not counted as dropped")
		}
	})
	t.Run("peer added live, removed live", func(t *testing.T) {
		late := h.dial(h.peer("personal", "late"))
		if got := txt(query(t, late, "_peer.internal", mdns.TypeTXT)); got != "laptop,late" {
			t.Errorf("_peer.internal = %q, want laptop,late", got)
		}
		if err := h.api.DeletePeer(ctx, "personal", "late"); err != nil {
			t.Fatal(err)
		}
		// The first client still works; the removed one's packets are dropped.
		if got := txt(query(t, c, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
			t.Errorf("after remove: _peer.internal = %q, want laptop", got)
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		q := new(mdns.Msg)
		q.SetQuestion("_peer.internal.", mdns.TypeTXT)
		if _, err := late.Exchange(qctx, q); err == nil {
			t.Errorf("removed peer still gets answers")
		}
	})
	t.Run("restart keeps peers", func(t *testing.T) {
		h.restart()
		c2 := h.dial(laptop)
		if got := txt(query(t, c2, "_peer.internal", mdns.TypeTXT)); got != "laptop" {
			t.Errorf("after restart: _peer.internal = %q, want laptop", got)
		}
		ps, err := h.api.ListPeers(h.ctx(), "")
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 2 {
			t.Errorf("after restart: %d peers, want 2 (laptop, intruder)", len(ps))
		}
		var hs bool
		for _, p := range ps {
			if p.Name == "laptop" && !p.LastHandshake.IsZero() && p.RxBytes > 0 {
				hs = true
			}
		}
		if !hs {
			t.Errorf("laptop shows no handshake after reconnecting: %+v", ps)
		}
	})
}

// TestBadInput checks that wrong requests are refused with a message that
// says what to do, and that nothing stored changes.
func TestBadInput(t *testing.T) {
	h := newHarness(t)
	ctx := h.ctx()
	h.peer("personal", "laptop")
	for _, tc := range []struct {
		name string
		req  api.CreatePeerRequest
		want string
	}{
		{"duplicate name", api.CreatePeerRequest{Org: "personal", Name: "laptop"}, "exists"},
		{"bad name", api.CreatePeerRequest{Org: "personal", Name: "Bad_Name"}, "name"},
		{"unknown org", api.CreatePeerRequest{Org: "nosuch", Name: "x"}, "nosuch"},
		{"unknown region", api.CreatePeerRequest{Org: "personal", Name: "y", Region: "mars"}, "regions that exist: local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				t.Fatal(err)
			}
			tc.req.PublicKey = k.PublicKey().String()
			_, err = h.api.CreatePeer(ctx, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	ps, err := h.api.ListPeers(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Name != "laptop" {
		t.Errorf("peers after bad input = %+v, want just laptop", ps)
	}
	// A second gateway on the same data dir is refused, and the first keeps going.
	_, err = Start(ctx, Config{DataDir: h.dir, RandomPort: true})
	if err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second gateway on one data dir: err = %v, want 'already running'", err)
	}
	// A port in use is named.
	pc, err := net.ListenPacket("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	_, err = Start(ctx, Config{DataDir: t.TempDir(), ListenPort: port})
	if err == nil || !strings.Contains(err.Error(), "--listen-port") {
		t.Errorf("port in use: err = %v, want advice about --listen-port", err)
	}
}
