// Package client is devgate's userspace WireGuard client: a wireguard-go
// device over wireguard-go's own netstack, configured from a wg-quick file.
// `devgate dig`, `devgate proxy`, the demo and the tests use it to reach a
// gateway without root or a kernel interface.
//
// It owns one client device and its netstack. It must never import the
// gateway's packages (tunnel, netstack, store, the API or the CLI): it talks
// to a gateway only over WireGuard, as a laptop would.
package client

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/devgate/devgate/peers"
	"github.com/miekg/dns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// defaultMTU matches wg-quick's default when the file sets none.
const defaultMTU = 1420

// maxDNSMessage bounds a DNS response read over UDP.
const maxDNSMessage = 65535

// ErrNoDNS is returned when the config names no DNS server.
var ErrNoDNS = errors.New("client: the WireGuard config has no DNS server")

// Client is a running userspace WireGuard peer.
type Client struct {
	dev   *device.Device
	net   *netstack.Net
	addr  netip.Addr // the interface's first IPv6 address
	dns   []netip.Addr
	httpc *http.Client

	// logMu is held while the device logs; logStopped, set by Close,
	// drops the lines of wireguard-go's workers that exit after it.
	logMu      sync.Mutex
	logStopped bool
	closeOnce  sync.Once
}

// New starts a client from a parsed wg-quick config. logf may be nil.
func New(cfg *peers.Config, logf func(format string, args ...any)) (*Client, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if len(cfg.Interface.Addresses) == 0 {
		return nil, errors.New("client: the WireGuard config has no Address; add one to [Interface]")
	}
	var local []netip.Addr
	for _, p := range cfg.Interface.Addresses {
		local = append(local, p.Addr())
	}
	mtu := cfg.Interface.MTU
	if mtu == 0 {
		mtu = defaultMTU
	}
	tdev, tnet, err := netstack.CreateNetTUN(local, cfg.Interface.DNS, mtu)
	if err != nil {
		return nil, fmt.Errorf("client: create netstack: %w", err)
	}
	c := &Client{net: tnet, addr: local[0], dns: cfg.Interface.DNS}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(f string, a ...any) {
			c.logMu.Lock()
			defer c.logMu.Unlock()
			if !c.logStopped {
				logf("wireguard client: "+f, a...)
			}
		},
	})
	c.dev = dev
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(cfg.Interface.PrivateKey[:]))
	for _, p := range cfg.Peers {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		if p.Endpoint != "" {
			ep, err := resolveEndpoint(p.Endpoint)
			if err != nil {
				c.closeDevice()
				return nil, err
			}
			fmt.Fprintf(&b, "endpoint=%s\n", ep)
		}
		if p.PersistentKeepalive > 0 {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", p.PersistentKeepalive)
		}
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	if err := dev.IpcSet(b.String()); err != nil {
		c.closeDevice()
		return nil, fmt.Errorf("client: configure wireguard: %w", err)
	}
	if err := dev.Up(); err != nil {
		c.closeDevice()
		return nil, fmt.Errorf("client: start wireguard: %w", err)
	}
	c.httpc = &http.Client{Transport: &http.Transport{
		DialContext:       c.DialContext,
		ForceAttemptHTTP2: false,
		IdleConnTimeout:   30 * time.Second,
	}}
	return c, nil
}

// resolveEndpoint turns host:port into ip:port; wireguard-go's UAPI wants
// an address.
func resolveEndpoint(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("client: resolve endpoint %s: %w", s, err)
	}
	return ua.AddrPort(), nil
}

// Addr is the client's own tunnel address.
func (c *Client) Addr() netip.Addr { return c.addr }

// DialContext dials through the tunnel. Names are resolved with the
// tunnel's DNS server (AAAA records).
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	port, err := net.LookupPort(network, portStr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		if ip, err = c.lookupAAAA(ctx, host); err != nil {
			return nil, err
		}
	}
	ap := netip.AddrPortFrom(ip, uint16(port))
	switch network {
	case "tcp", "tcp6":
		return c.net.DialContextTCPAddrPort(ctx, ap)
	case "udp", "udp6":
		return c.net.DialUDPAddrPort(netip.AddrPort{}, ap)
	}
	return nil, fmt.Errorf("client: dial %s: unsupported network %q", addr, network)
}

func (c *Client) lookupAAAA(ctx context.Context, host string) (netip.Addr, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(host), dns.TypeAAAA)
	r, err := c.Exchange(ctx, q)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("client: resolve %s: %w", host, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return netip.Addr{}, fmt.Errorf("client: resolve %s: %s", host, dns.RcodeToString[r.Rcode])
	}
	for _, rr := range r.Answer {
		if aaaa, ok := rr.(*dns.AAAA); ok {
			if ip, ok := netip.AddrFromSlice(aaaa.AAAA); ok {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("client: resolve %s: no AAAA record", host)
}

// Exchange sends q to the config's first DNS server over UDP through the
// tunnel, and again over TCP when the answer is truncated.
func (c *Client) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if len(c.dns) == 0 {
		return nil, ErrNoDNS
	}
	server := netip.AddrPortFrom(c.dns[0], 53)
	r, err := c.exchange(ctx, "udp", server, q)
	if err == nil && r.Truncated {
		r, err = c.exchange(ctx, "tcp", server, q)
	}
	if err != nil {
		return nil, fmt.Errorf("client: DNS query to %s: %w", server, err)
	}
	return r, nil
}

func (c *Client) exchange(ctx context.Context, network string, server netip.AddrPort, q *dns.Msg) (*dns.Msg, error) {
	var nc net.Conn
	var err error
	if network == "udp" {
		nc, err = c.net.DialUDPAddrPort(netip.AddrPort{}, server)
	} else {
		nc, err = c.net.DialContextTCPAddrPort(ctx, server)
	}
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	nc.SetDeadline(deadline)
	// Close the conn when ctx ends, so a cancel interrupts the read.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	co := &dns.Conn{Conn: nc, UDPSize: maxDNSMessage}
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if r.Id == q.Id { // a late answer to an earlier query is skipped
			return r, nil
		}
	}
}

// Ping's wait for one echo's reply starts at pingFirstWait and doubles up
// to pingMaxWait, as ping(8) sends one a second.
const (
	pingFirstWait = 200 * time.Millisecond
	pingMaxWait   = time.Second
)

// Ping sends ICMPv6 echo requests to addr through the tunnel until one is
// answered, and returns that echo's round-trip time. It gives up when ctx
// ends.
//
// Each echo goes out on a fresh socket. wireguard-go's PingConn waits for
// a "readable" event before it reads, and gVisor signals one only when the
// socket's queue goes from empty to not: a reply that arrives between the
// write and that wait is never seen, and neither is any later one on the
// same socket. A missed reply so costs one wait (200 ms the first time).
func (c *Client) Ping(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	wait := pingFirstWait
	for seq := 1; ; seq++ {
		rtt, err := c.echo(ctx, addr, seq, wait)
		switch {
		case err == nil:
			return rtt, nil
		case ctx.Err() != nil:
			return 0, fmt.Errorf("client: ping %s: no answer to %d echo requests: %w", addr, seq, ctx.Err())
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return 0, fmt.Errorf("client: ping %s: %w", addr, err)
		}
		wait = min(2*wait, pingMaxWait)
	}
}

// echo sends one echo request with sequence number seq and waits up to
// wait (or until ctx ends) for its reply.
func (c *Client) echo(ctx context.Context, addr netip.Addr, seq int, wait time.Duration) (time.Duration, error) {
	pc, err := c.net.DialPingAddr(netip.Addr{}, addr)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	pc.SetReadDeadline(time.Now().Add(wait))
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	msg := icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 1, Seq: int(uint16(seq)), Data: []byte("devgate")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := pc.Write(b); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, err := pc.Read(buf)
		if err != nil {
			return 0, err
		}
		// A late reply to an earlier echo may reach this socket if it
		// was given the same identifier; only this echo's counts.
		m, err := icmp.ParseMessage(58, buf[:n])
		if err != nil || m.Type != ipv6.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == int(uint16(seq)) {
			return time.Since(start), nil
		}
	}
}

// HTTPClient returns an HTTP client that dials through the tunnel.
func (c *Client) HTTPClient() *http.Client { return c.httpc }

// Close stops the device and its netstack. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.httpc.CloseIdleConnections()
		c.closeDevice()
	})
	return nil
}

// closeDevice closes the device and drops what its exiting workers log.
func (c *Client) closeDevice() {
	c.dev.Close()
	c.logMu.Lock()
	c.logStopped = true
	c.logMu.Unlock()
}
