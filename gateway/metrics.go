package gateway

import (
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// observeDNS counts DNS replies by question type and rcode.
func (g *Gateway) observeDNS() func(uint16, int) {
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "devgate_dns_queries_total", Help: "DNS replies sent, by question type and rcode.",
	}, []string{"type", "rcode"})
	g.reg.MustRegister(queries)
	return func(qtype uint16, rcode int) {
		t, ok := mdns.TypeToString[qtype]
		if !ok {
			t = "other"
		}
		r, ok := mdns.RcodeToString[rcode]
		if !ok {
			r = "other"
		}
		queries.WithLabelValues(t, r).Inc()
	}
}

// registerDataPlaneMetrics exports the netstack's counters and the peers'
// WireGuard state, read at scrape time so the packet path pays nothing.
func (g *Gateway) registerDataPlaneMetrics() {
	g.reg.MustRegister(dataPlaneCollector{g})
}

var (
	refusedDesc   = prometheus.NewDesc("devgate_netstack_refused_total", "Packets or flows the netstack refused or dropped, by reason.", []string{"reason"}, nil)
	acceptedDesc  = prometheus.NewDesc("devgate_netstack_tcp_accepted_total", "TCP connections handed to services.", nil, nil)
	ackHeldDesc   = prometheus.NewDesc("devgate_netstack_acks_held_total", "Bare TCP ACKs held for a reply to carry, by outcome: carried (the reply took it, one packet saved) or delayed (sent alone when due).", []string{"outcome"}, nil)
	handshakeDesc = prometheus.NewDesc("devgate_peer_handshake_age_seconds", "Seconds since each peer's last WireGuard handshake (absent: never).", []string{"org", "peer"}, nil)
	rxDesc        = prometheus.NewDesc("devgate_peer_rx_bytes_total", "Bytes received from each peer.", []string{"org", "peer"}, nil)
	txDesc        = prometheus.NewDesc("devgate_peer_tx_bytes_total", "Bytes sent to each peer.", []string{"org", "peer"}, nil)
	loadedDesc    = prometheus.NewDesc("devgate_wireguard_peers_loaded", "Peers the WireGuard device holds now: those with a recent handshake; the rest wait in a compact table.", nil, nil)
	loadsDesc     = prometheus.NewDesc("devgate_wireguard_peer_loads_total", "Peers loaded into the WireGuard device, by their handshake or by a packet to them.", nil, nil)
	unloadsDesc   = prometheus.NewDesc("devgate_wireguard_peer_unloads_total", "Idle peers unloaded from the WireGuard device.", nil, nil)
	replaysDesc   = prometheus.NewDesc("devgate_wireguard_initiations_replayed_total", "Handshake initiations refused because they were sealed before the peer's last handshake ahead of an unload: captured and replayed, or from a peer whose clock went back.", nil, nil)
	handedDesc    = prometheus.NewDesc("devgate_wireguard_initiations_handed_back_total", "Handshake initiations withheld from WireGuard until their sender was proven, then handed to it.", nil, nil)
	sendGateDesc  = prometheus.NewDesc("devgate_wireguard_send_waits_total", "Times the send gate held WireGuard's reading of the netstack's packets while too many waited to be sealed and sent, by how the wait ended: drained (sending caught up) or forgotten (not drained within 2 ms: WireGuard holds packets for a peer still handshaking and drops some, so the count starts again).", []string{"outcome"}, nil)
	gateDesc      = prometheus.NewDesc("devgate_wireguard_receive_waits_total", "Times the receive gate held WireGuard's receive loop while too many datagrams waited for the netstack, by how the wait ended: drained (the netstack caught up) or written_off (a session saw none of its datagrams written for 2 ms, so WireGuard had dropped them; that session is no longer gated).", []string{"outcome"}, nil)
)

type dataPlaneCollector struct{ g *Gateway }

func (c dataPlaneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{refusedDesc, acceptedDesc, ackHeldDesc, handshakeDesc, rxDesc, txDesc, loadedDesc, loadsDesc, unloadsDesc, replaysDesc, handedDesc, gateDesc, sendGateDesc} {
		ch <- d
	}
}

func (c dataPlaneCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.stack.Stats()
	for reason, v := range map[string]uint64{
		"not_ipv6": s.DroppedNotIPv6, "malformed": s.DroppedMalformed, "cross_network": s.DroppedCrossNetwork,
		"echo_no_address": s.DroppedEchoNoAddress, "icmp_other": s.DroppedICMPOther, "bad_checksum": s.DroppedBadChecksum,
		"tcp_no_route": s.RefusedNoRoute, "tcp_syn_limit": s.RefusedSYNLimit,
	} {
		ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.CounterValue, float64(v), reason)
	}
	ch <- prometheus.MustNewConstMetric(acceptedDesc, prometheus.CounterValue, float64(s.TCPAccepted))
	ch <- prometheus.MustNewConstMetric(ackHeldDesc, prometheus.CounterValue, float64(s.ACKsCarried), "carried")
	ch <- prometheus.MustNewConstMetric(ackHeldDesc, prometheus.CounterValue, float64(s.ACKsDelayed), "delayed")
	ls := c.g.tun.Loads()
	ch <- prometheus.MustNewConstMetric(loadedDesc, prometheus.GaugeValue, float64(ls.Loaded))
	ch <- prometheus.MustNewConstMetric(loadsDesc, prometheus.CounterValue, float64(ls.Loads))
	ch <- prometheus.MustNewConstMetric(unloadsDesc, prometheus.CounterValue, float64(ls.Unloads))
	ch <- prometheus.MustNewConstMetric(replaysDesc, prometheus.CounterValue, float64(ls.Replays))
	ch <- prometheus.MustNewConstMetric(handedDesc, prometheus.CounterValue, float64(ls.HandedBack))
	gs := c.g.tun.ReceiveGate()
	ch <- prometheus.MustNewConstMetric(gateDesc, prometheus.CounterValue, float64(gs.Drained), "drained")
	ch <- prometheus.MustNewConstMetric(gateDesc, prometheus.CounterValue, float64(gs.WrittenOff), "written_off")
	ss := c.g.tun.SendGate()
	ch <- prometheus.MustNewConstMetric(sendGateDesc, prometheus.CounterValue, float64(ss.Drained), "drained")
	ch <- prometheus.MustNewConstMetric(sendGateDesc, prometheus.CounterValue, float64(ss.Forgotten), "forgotten")
	stats, err := c.g.tun.Stats()
	if err != nil {
		return
	}
	byKey := make(map[string][2]string, len(stats))
	for _, p := range c.g.snap.Load().Peers {
		byKey[p.PublicKey] = [2]string{p.Org, p.Name}
	}
	now := time.Now()
	for _, st := range stats {
		who, ok := byKey[st.PublicKey.String()]
		if !ok {
			continue
		}
		if !st.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(handshakeDesc, prometheus.GaugeValue, now.Sub(st.LastHandshake).Seconds(), who[0], who[1])
		}
		ch <- prometheus.MustNewConstMetric(rxDesc, prometheus.CounterValue, float64(st.RxBytes), who[0], who[1])
		ch <- prometheus.MustNewConstMetric(txDesc, prometheus.CounterValue, float64(st.TxBytes), who[0], who[1])
	}
}
