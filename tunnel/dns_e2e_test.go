package tunnel_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/devgate/devgate/netstack"
	"github.com/devgate/devgate/peers"
	"github.com/miekg/dns"
)

// TestDNSThroughTunnel runs a miekg server on the stack's ListenUDP and
// ListenTCP at <prefix>::3:53 and queries it with client.Exchange, once
// over UDP and once through a truncated answer that forces TCP.
func TestDNSThroughTunnel(t *testing.T) {
	checkGoroutines(t)
	gw := newGateway(t, netstack.Config{}, "")
	resolver := netip.AddrPortFrom(peers.Resolver(network), 53)
	pc, err := gw.stack.ListenUDP(resolver)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := gw.stack.ListenTCP(resolver)
	if err != nil {
		t.Fatal(err)
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		_, overTCP := w.RemoteAddr().(*net.TCPAddr)
		if q.Question[0].Name == "big.flycast." && !overTCP {
			m.Truncated = true
		} else {
			m.Answer = append(m.Answer, &dns.AAAA{
				Hdr:  dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 5},
				AAAA: service.AsSlice(),
			})
		}
		w.WriteMsg(m)
	})
	udpSrv := &dns.Server{PacketConn: pc, Handler: handler}
	tcpSrv := &dns.Server{Listener: ln, Handler: handler}
	done := make(chan error, 2)
	go func() { done <- udpSrv.ActivateAndServe() }()
	go func() { done <- tcpSrv.ActivateAndServe() }()
	t.Cleanup(func() {
		udpSrv.Shutdown()
		tcpSrv.Shutdown()
		for range 2 {
			<-done
		}
	})

	c, _ := gw.addClient(t, 1, false)
	for _, name := range []string{"hello.flycast.", "big.flycast."} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeAAAA)
		r, err := c.Exchange(ctxTimeout(t, 15*time.Second), q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Truncated || len(r.Answer) != 1 {
			t.Fatalf("%s: answer = %v, want one AAAA", name, r)
		}
		if got, _ := netip.AddrFromSlice(r.Answer[0].(*dns.AAAA).AAAA); got != service {
			t.Errorf("%s: AAAA = %s, want %s", name, got, service)
		}
	}
	// A name resolved by the client's DialContext goes through the same
	// server.
	conn, err := c.DialContext(ctxTimeout(t, 15*time.Second), "tcp", "hello.flycast:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn, "by name")
}
