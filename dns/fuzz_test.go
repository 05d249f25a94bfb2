package dns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/store"
)

// fuzzSeeds are queries for every kind of name plus broken messages.
func fuzzSeeds(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"hello.flycast.", mdns.TypeAAAA},
		{"hello.internal.", mdns.TypeAAAA},
		{"top2.nearest.of.hello.internal.", mdns.TypeAAAA},
		{machineID(1) + ".vm.hello.internal.", mdns.TypeAAAA},
		{"alice._peer.internal.", mdns.TypeAAAA},
		{"_api.internal.", mdns.TypeAAAA},
		{"_instances.internal.", mdns.TypeTXT},
		{"vms.big.internal.", mdns.TypeTXT},
		{"internal.", mdns.TypeSOA},
		{`a\.internal.`, mdns.TypeANY},
		{"example.com.", mdns.TypeA},
	} {
		m := new(mdns.Msg).SetQuestion(q.name, q.qtype)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		m.SetEdns0(4096, true)
		if b, err = m.Pack(); err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}) // one question, none present
	f.Add([]byte{0, 1, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1})
}

// FuzzAnswer: arbitrary bytes that unpack as a message never make Answer
// panic, and any answer packs.
func FuzzAnswer(f *testing.F) {
	fuzzSeeds(f)
	snap := fixtureSnapshot()
	s := New(Config{Snapshot: func() *store.Snapshot { return snap }, Region: gatewayRegion})
	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(mdns.Msg)
		if err := q.Unpack(b); err != nil {
			return
		}
		for _, k := range []store.NetworkKey{netA, netB, {}} {
			r := s.Answer(k, q)
			if r == nil {
				continue
			}
			if r.Id != q.Id || !r.Response {
				t.Fatalf("reply id %d response %v to query id %d", r.Id, r.Response, q.Id)
			}
			if _, err := r.Pack(); err != nil {
				t.Fatalf("answer to %v does not pack: %v", q.Question, err)
			}
		}
	})
}

// FuzzServeDNS sends arbitrary datagrams to a real server on loopback (with
// a real upstream) and checks that any reply parses and echoes the ID, and
// that the server still answers afterwards.
func FuzzServeDNS(f *testing.F) {
	fuzzSeeds(f)
	up := startUpstream(f)
	// The server logs failed forwards; f.Logf must not be called from
	// inside the fuzz target (testing panics), and the target's checks are
	// on the replies, so the log is dropped.
	ts := startServer(f, Config{Upstreams: []string{up.addr}, UpstreamTimeout: time.Second,
		Logf: func(string, ...any) {}})
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ts.udpAddr))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: srcA.AsSlice()}, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		// Short messages and responses get no reply by design.
		if len(b) < 12 || b[2]&0x80 != 0 || len(b) > maxUDPQuerySize {
			return
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply to %d bytes: %v", len(b), err)
		}
		r := new(mdns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if r.Id != uint16(b[0])<<8|uint16(b[1]) || !r.Response {
			t.Fatalf("reply id %d response %v", r.Id, r.Response)
		}
		if n > MaxUDPSize {
			t.Fatalf("UDP reply of %d bytes", n)
		}
	})
}
