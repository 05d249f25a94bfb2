package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/devgate/devgate/peers"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"hello", true}, {"a", true}, {"a-1", true}, {strings.Repeat("a", 63), true},
		{"", false}, {"1abc", false}, {"-a", false}, {"Hello", false}, {"a.b", false},
		{"a_b", false}, {"a b", false}, {"a>", false}, {"a*", false}, {strings.Repeat("a", 64), false},
		{"héllo", false},
	} {
		err := ValidateName("app", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "lowercase letters, digits and hyphens") {
			t.Errorf("error %q does not say what is allowed", err)
		}
	}
}

func TestOrgsAndNetworks(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)

	o, err := s.EnsureOrg(ctx, DefaultOrg)
	if err != nil || o.Name != DefaultOrg {
		t.Fatalf("EnsureOrg: %v %v", o, err)
	}
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatalf("EnsureOrg again: %v", err)
	}
	if _, err := s.CreateOrg(ctx, DefaultOrg); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateOrg existing: %v", err)
	}
	if _, err := s.CreateOrg(ctx, "Bad_Name"); err == nil || errors.Is(err, ErrExists) {
		t.Fatalf("CreateOrg bad name: %v", err)
	}
	if _, err := s.CreateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	orgs, err := s.ListOrgs(ctx)
	if err != nil || len(orgs) != 2 || orgs[0].Name != "acme" || orgs[1].Name != DefaultOrg {
		t.Fatalf("ListOrgs = %v, %v", orgs, err)
	}
	if _, err := s.GetOrg(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetOrg unknown: %v", err)
	}

	def, err := s.GetNetwork(ctx, DefaultOrg, DefaultNetwork)
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.CreateNetwork(ctx, "acme", "staging")
	if err != nil {
		t.Fatal(err)
	}
	acmeDef, err := s.GetNetwork(ctx, "acme", DefaultNetwork)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for _, n := range []Network{def, acmeDef, other} {
		if n.Number == 0 || seen[n.Number] || n.Prefix != peers.NetworkPrefix(n.Number) {
			t.Fatalf("bad or duplicate network number: %+v", n)
		}
		seen[n.Number] = true
	}
	if _, err := s.CreateNetwork(ctx, "acme", "staging"); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateNetwork existing: %v", err)
	}
	if _, err := s.CreateNetwork(ctx, "nope", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateNetwork unknown org: %v", err)
	}
	if _, err := s.CreateNetwork(ctx, "acme", "UPPER"); err == nil {
		t.Fatal("CreateNetwork accepted an invalid name")
	}
	nets, err := s.ListNetworks(ctx, "acme")
	if err != nil || len(nets) != 2 || nets[0].Name != DefaultNetwork || nets[1].Name != "staging" {
		t.Fatalf("ListNetworks = %v, %v", nets, err)
	}
	if _, err := s.ListNetworks(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ListNetworks unknown org: %v", err)
	}
	// A failed create still used a number: numbers are never reused.
	n4, err := s.CreateNetwork(ctx, DefaultOrg, "later")
	if err != nil || n4.Number <= other.Number {
		t.Fatalf("later network %+v (after %d): %v", n4, other.Number, err)
	}
}

func TestPeers(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	nw, _ := s.GetNetwork(ctx, DefaultOrg, DefaultNetwork)
	key := newKey(t)
	p, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Network: DefaultNetwork, Name: "laptop", Region: "ams", PublicKey: key})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := peers.Peer(nw.Prefix, 1, 1)
	if p.Address != want || p.CreatedAt.IsZero() {
		t.Fatalf("peer = %+v, want address %v", p, want)
	}
	got, err := s.GetPeer(ctx, DefaultOrg, "laptop")
	if err != nil || got.PublicKey != key || got.Address != want || got.Region != "ams" {
		t.Fatalf("GetPeer = %+v, %v", got, err)
	}
	for name, tc := range map[string]struct {
		p    Peer
		want error
	}{
		"same name":      {Peer{Org: DefaultOrg, Name: "laptop", PublicKey: newKey(t)}, ErrExists},
		"same key":       {Peer{Org: "acme", Name: "other", PublicKey: key}, ErrExists},
		"unknown org":    {Peer{Org: "nope", Name: "x", PublicKey: newKey(t)}, ErrNotFound},
		"unknown net":    {Peer{Org: DefaultOrg, Network: "nope", Name: "x", PublicKey: newKey(t)}, ErrNotFound},
		"bad name":       {Peer{Org: DefaultOrg, Name: "X", PublicKey: newKey(t)}, nil},
		"bad public key": {Peer{Org: DefaultOrg, Name: "x", PublicKey: "not a key"}, nil},
	} {
		_, err := s.CreatePeer(ctx, tc.p)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: CreatePeer = %v, want %v", name, err, tc.want)
		}
	}
	// Same name in another organization is fine.
	q, err := s.CreatePeer(ctx, Peer{Org: "acme", Name: "laptop", PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if peers.SameNetwork(p.Address, q.Address) {
		t.Fatalf("peers of two orgs share a network: %v %v", p.Address, q.Address)
	}
	all, err := s.ListPeers(ctx, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("ListPeers all = %v, %v", all, err)
	}
	mine, err := s.ListPeers(ctx, "acme")
	if err != nil || len(mine) != 1 || mine[0].Org != "acme" {
		t.Fatalf("ListPeers acme = %v, %v", mine, err)
	}
	if err := s.DeletePeer(ctx, DefaultOrg, "laptop"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePeer(ctx, DefaultOrg, "laptop"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeletePeer twice: %v", err)
	}
	if _, err := s.GetPeer(ctx, DefaultOrg, "laptop"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPeer deleted: %v", err)
	}
	// The key and name are free again; the address is not reused.
	r, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: "laptop", PublicKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if r.Address == p.Address {
		t.Fatalf("address %v reused", r.Address)
	}
}

func TestAppsIPsMachines(t *testing.T) {
	_, s := newTestStore(t, t.TempDir())
	ctx := testCtx(t)
	for _, o := range []string{DefaultOrg, "acme"} {
		if _, err := s.EnsureOrg(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateApp unknown org: %v", err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "Hello", Org: DefaultOrg}); err == nil {
		t.Fatal("CreateApp accepted an invalid name")
	}
	a, err := s.CreateApp(ctx, App{Name: "hello", Org: DefaultOrg, Flycast: true})
	if err != nil || a.Network != DefaultNetwork {
		t.Fatalf("CreateApp = %+v, %v", a, err)
	}
	if _, err := s.CreateApp(ctx, App{Name: "hello", Org: "acme"}); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateApp duplicate in another org: %v", err)
	}
	u, err := s.UpdateApp(ctx, "hello", func(a *App) error {
		a.Config, a.Deployed, a.Name = []byte("app = 'hello'\n"), true, "renamed"
		return nil
	})
	if err != nil || !u.Deployed || u.Name != "hello" {
		t.Fatalf("UpdateApp = %+v, %v", u, err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateApp(ctx, "hello", func(*App) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("UpdateApp fn error: %v", err)
	}
	if _, err := s.UpdateApp(ctx, "nope", func(*App) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdateApp unknown: %v", err)
	}
	g, err := s.GetApp(ctx, "hello")
	if err != nil || string(g.Config) != "app = 'hello'\n" || !g.Flycast {
		t.Fatalf("GetApp = %+v, %v", g, err)
	}

	own, _ := s.GetNetwork(ctx, DefaultOrg, DefaultNetwork)
	acme, _ := s.GetNetwork(ctx, "acme", DefaultNetwork)
	ip1, err := s.AllocateIP(ctx, "hello", "", "", "ams")
	if err != nil || ip1.Address != peers.Flycast(own.Prefix, 1) || ip1.Type != IPPrivate {
		t.Fatalf("AllocateIP = %+v, %v", ip1, err)
	}
	ip2, err := s.AllocateIP(ctx, "hello", "acme", "", "ams")
	if err != nil || ip2.Address != peers.Flycast(acme.Prefix, 1) || ip2.Org != "acme" {
		t.Fatalf("AllocateIP other org = %+v, %v", ip2, err)
	}
	if _, err := s.AllocateIP(ctx, "nope", "", "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AllocateIP unknown app: %v", err)
	}
	if _, err := s.AllocateIP(ctx, "hello", "nope", "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AllocateIP unknown org: %v", err)
	}
	ips, err := s.ListIPs(ctx, "hello")
	if err != nil || len(ips) != 2 {
		t.Fatalf("ListIPs = %v, %v", ips, err)
	}

	m, err := s.CreateMachine(ctx, Machine{App: "hello", Region: "ams", Driver: "process", Command: []string{"./server"}})
	if err != nil {
		t.Fatal(err)
	}
	wantAddr, _ := peers.Machine(own.Prefix, 1, 1)
	if len(m.ID) != 14 || m.Address != wantAddr || m.State != MachineCreated || m.ProcessGroup != "app" {
		t.Fatalf("CreateMachine = %+v", m)
	}
	if _, err := s.CreateMachine(ctx, Machine{App: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateMachine unknown app: %v", err)
	}
	m2, err := s.UpdateMachine(ctx, m.ID, func(m *Machine) error { m.State, m.ID = MachineStarted, "x"; return nil })
	if err != nil || m2.State != MachineStarted || m2.ID != m.ID || !m2.UpdatedAt.After(m.UpdatedAt) && !m2.UpdatedAt.Equal(m.UpdatedAt) {
		t.Fatalf("UpdateMachine = %+v, %v", m2, err)
	}
	if got, err := s.GetMachine(ctx, m.ID); err != nil || got.State != MachineStarted {
		t.Fatalf("GetMachine = %+v, %v", got, err)
	}
	if _, err := s.GetMachine(ctx, "../etc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetMachine bad id: %v", err)
	}
	m3, err := s.CreateMachine(ctx, Machine{App: "hello"})
	if err != nil || m3.Address == m.Address || m3.ID == m.ID {
		t.Fatalf("second machine = %+v, %v", m3, err)
	}
	if err := s.DeleteMachine(ctx, m3.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMachine(ctx, m3.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteMachine twice: %v", err)
	}

	if err := s.ReleaseIP(ctx, "other", ip1.Address); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReleaseIP of another app: %v", err)
	}
	if err := s.ReleaseIP(ctx, "hello", ip1.Address); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseIP(ctx, "hello", ip1.Address); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReleaseIP twice: %v", err)
	}
	ip3, err := s.AllocateIP(ctx, "hello", "", "", "")
	if err != nil || ip3.Address == ip1.Address {
		t.Fatalf("address reused after release: %v %v", ip3, err)
	}

	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Apps) != 1 || len(snap.IPs) != 2 || len(snap.Machines) != 1 || len(snap.Orgs) != 2 || len(snap.Networks) != 2 {
		t.Fatalf("snapshot: %d apps %d ips %d machines %d orgs %d networks", len(snap.Apps), len(snap.IPs), len(snap.Machines), len(snap.Orgs), len(snap.Networks))
	}
	if _, ok := snap.MachineAt(m.Address); !ok {
		t.Fatal("snapshot misses machine address")
	}

	if err := s.DeleteApp(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteApp(ctx, "hello"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteApp twice: %v", err)
	}
	if ips, _ := s.ListIPs(ctx, ""); len(ips) != 0 {
		t.Fatalf("IPs left after DeleteApp: %v", ips)
	}
	if ms, _ := s.ListMachines(ctx, ""); len(ms) != 0 {
		t.Fatalf("machines left after DeleteApp: %v", ms)
	}
	if apps, err := s.ListApps(ctx); err != nil || len(apps) != 0 {
		t.Fatalf("ListApps = %v, %v", apps, err)
	}
}
