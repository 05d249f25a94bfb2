package dns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// Sentinel errors of forwarding, for callers and tests to test with errors.Is.
var (
	// ErrForwardBusy: MaxForwardInFlight forwards are already in progress.
	ErrForwardBusy = errors.New("dns: too many forwarded queries in flight")
	// ErrNoUpstreams: the server has no upstream resolvers configured.
	ErrNoUpstreams = errors.New("dns: no upstream resolvers; set Config.Upstreams or fix /etc/resolv.conf")
)

// maxResolvConfBytes bounds how much of resolv.conf is read.
const maxResolvConfBytes = 64 << 10

// forward sends r to the upstreams in turn, over TCP when tcp is set, and
// returns the first usable reply with r's ID. It fails at once with
// ErrForwardBusy beyond MaxForwardInFlight, so load never queues.
func (s *Server) forward(r *mdns.Msg, tcp bool) (*mdns.Msg, error) {
	if len(s.cfg.Upstreams) == 0 {
		return nil, ErrNoUpstreams
	}
	select {
	case s.forwards <- struct{}{}:
		defer func() { <-s.forwards }()
	default:
		return nil, ErrForwardBusy
	}

	q := r.Copy()
	// A fresh ID per upstream query: the client's ID is its own business and
	// a random one makes forged upstream replies harder to slip in.
	q.Id = mdns.Id()
	if opt := q.IsEdns0(); opt != nil && opt.UDPSize() > MaxUDPSize {
		// We never send the client more than MaxUDPSize over UDP; asking the
		// upstream for more only invites fragmentation.
		opt.SetUDPSize(MaxUDPSize)
	}
	c := &mdns.Client{Net: "udp", Timeout: s.cfg.UpstreamTimeout, UDPSize: MaxUDPSize}
	if tcp {
		c.Net = "tcp"
	}

	var errs []error
	var last *mdns.Msg
	for _, up := range s.cfg.Upstreams {
		reply, err := s.exchange(c, q, up)
		if err != nil {
			s.cfg.Logf("dns: forward %s %s to %s: %v", q.Question[0].Name, mdns.TypeToString[q.Question[0].Qtype], up, err)
			errs = append(errs, fmt.Errorf("upstream %s: %w", up, err))
			if s.ctx.Err() != nil {
				break // closing: do not try the others
			}
			continue
		}
		reply.Id = r.Id
		if reply.Rcode == mdns.RcodeServerFailure || reply.Rcode == mdns.RcodeRefused {
			// This upstream cannot answer; another may.
			last = reply
			continue
		}
		return reply, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, fmt.Errorf("forward %s: %w", q.Question[0].Name, errors.Join(errs...))
}

// exchange does one query with one upstream. Close aborts it: the client
// honours only deadlines, so a cancelled server context moves the
// connection's deadline to now.
func (s *Server) exchange(c *mdns.Client, q *mdns.Msg, upstream string) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.UpstreamTimeout)
	defer cancel()
	conn, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Now()) // fails only if already closed, which also ends the read
	})
	defer stop()
	reply, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		return nil, err
	}
	if !reply.Response || len(reply.Question) != 1 ||
		!strings.EqualFold(reply.Question[0].Name, q.Question[0].Name) ||
		reply.Question[0].Qtype != q.Question[0].Qtype ||
		reply.Question[0].Qclass != q.Question[0].Qclass {
		return nil, errors.New("reply does not match the question")
	}
	return reply, nil
}

// UpstreamsFromResolvConf returns the nameservers of a resolv.conf file
// (usually /etc/resolv.conf) as "host:53" addresses, in file order.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream resolvers: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(io.LimitReader(f, maxResolvConfBytes))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		// An IPv6 link-local server may carry a zone (fe80::1%eth0).
		ip, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue // not an address: resolv(5) ignores it too
		}
		out = append(out, net.JoinHostPort(ip.String(), "53"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read upstream resolvers from %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", path, ErrNoUpstreams)
	}
	return out, nil
}
