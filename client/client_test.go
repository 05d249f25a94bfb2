package client

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/devgate/devgate/peers"
	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The client's traffic paths (dial, DNS, ping, HTTP) are tested end to end
// against a real gateway in tunnel's e2e tests; these cover configuration.

func TestNewRejectsConfigWithoutAddress(t *testing.T) {
	if _, err := New(&peers.Config{}, nil); err == nil {
		t.Fatal("config without Address accepted")
	}
}

func TestExchangeWithoutDNS(t *testing.T) {
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &peers.Config{Interface: peers.Interface{
		PrivateKey: priv,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("fdaa:0:1:a7b:1:0:a:102/120")},
	}}
	c, err := New(cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer c.Close() // idempotent
	if c.Addr() != cfg.Interface.Addresses[0].Addr() {
		t.Errorf("Addr = %s", c.Addr())
	}
	q := new(dns.Msg)
	q.SetQuestion("x.flycast.", dns.TypeAAAA)
	if _, err := c.Exchange(context.Background(), q); !errors.Is(err, ErrNoDNS) {
		t.Errorf("Exchange without DNS: %v, want ErrNoDNS", err)
	}
}

func TestBadEndpoint(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	cfg := peers.ClientConfig(priv, priv.PublicKey(), netip.MustParseAddr("fdaa::2"), peers.NetworkPrefix(1), "no-port")
	if _, err := New(cfg, nil); err == nil {
		t.Fatal("endpoint without a port accepted")
	}
}
