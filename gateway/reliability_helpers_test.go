package gateway

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/peers"
	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// probeTimeout is how long a probe waits for any answer (a SYN-ACK, a RST, a
// UDP reply, an echo reply). Packets on loopback answer in well under a
// millisecond, so silence after this long means nothing came back.
const probeTimeout = 700 * time.Millisecond

// maxParallelProbes bounds the probes in flight from one test.
const maxParallelProbes = 16

// peerIn registers a peer in org's network and returns its config.
func (h *harness) peerIn(org, network, name string) *peers.Config {
	h.t.Helper()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		h.t.Fatal(err)
	}
	res, err := h.api.CreatePeer(h.ctx(), api.CreatePeerRequest{Org: org, Network: network, Name: name, PublicKey: priv.PublicKey().String()})
	if err != nil {
		h.t.Fatalf("create peer %s/%s/%s: %v", org, network, name, err)
	}
	gw, _ := wgtypes.ParseKey(res.GatewayPublicKey)
	return peers.ClientConfig(priv, gw, res.Peer.Address, res.NetworkPrefix, h.endpoint())
}

// probe is one attempt to get an answer from a target through the tunnel.
type probe struct {
	proto string // "tcp", "udp" or "icmp"
	dst   netip.AddrPort
	why   string
}

func (p probe) String() string { return p.proto + " " + p.dst.String() + " (" + p.why + ")" }

// answered reports whether anything at all came back: a TCP connection or a
// refusal (a RST is an answer), a UDP reply or ICMP error, an echo reply.
func (p probe) answered(c *client.Client) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	switch p.proto {
	case "tcp":
		conn, err := c.DialContext(ctx, "tcp", p.dst.String())
		if err == nil {
			conn.Close()
			return true, "connected"
		}
		if errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "refused") {
			return true, "refused: " + err.Error()
		}
		return false, err.Error()
	case "udp":
		conn, err := c.DialContext(ctx, "udp", p.dst.String())
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		q := new(mdns.Msg)
		q.SetQuestion("_peer.internal.", mdns.TypeTXT)
		b, _ := q.Pack()
		conn.SetDeadline(time.Now().Add(probeTimeout))
		if _, err := conn.Write(b); err != nil {
			return false, err.Error()
		}
		buf := make([]byte, 1500)
		if n, err := conn.Read(buf); err == nil {
			return true, "reply of " + strconv.Itoa(n) + " bytes"
		} else if strings.Contains(err.Error(), "refused") || strings.Contains(err.Error(), "unreachable") {
			return true, "ICMP error: " + err.Error()
		} else {
			return false, err.Error()
		}
	case "icmp":
		if _, err := c.Ping(ctx, p.dst.Addr()); err == nil {
			return true, "echo reply"
		} else {
			return false, err.Error()
		}
	}
	return false, "unknown protocol"
}

// runProbes runs every probe from c, a bounded number at a time, and returns
// those that were answered with what came back.
func runProbes(c *client.Client, ps []probe) map[probe]string {
	var mu sync.Mutex
	out := map[probe]string{}
	sem := make(chan struct{}, maxParallelProbes)
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if ok, what := p.answered(c); ok {
				mu.Lock()
				out[p] = what
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// helloConfig is the fly.toml launch writes for an app running this test
// binary's hello server.
func helloConfig(name string) []byte {
	return appconfig.Generate(appconfig.LaunchOptions{App: name, PrimaryRegion: "local", Command: "devgate hello", InternalPort: 80, Flycast: true})
}

// newHarnessWith is newHarness with a changed gateway Config (shorter wake
// or queue timeouts, an external NATS).
func newHarnessWith(t *testing.T, mod func(*Config)) *harness {
	h := &harness{t: t, dir: t.TempDir(), ups: upstream(t), idle: time.Hour}
	h.startWith(mod)
	return h
}

func (h *harness) config() Config {
	return Config{
		DataDir: h.dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{h.ups},
		IdleTimeout: h.idle, UAPIPath: filepath.Join(h.dir, "wg.sock"), Logf: h.t.Logf,
	}
}

func (h *harness) startWith(mod func(*Config)) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := h.config()
	if mod != nil {
		mod(&cfg)
	}
	g, err := Start(ctx, cfg)
	if err != nil {
		h.t.Fatalf("start gateway: %v", err)
	}
	h.g = g
	h.api = api.NewUnixClient(h.dir)
	h.t.Cleanup(func() { h.stop() })
}
