package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/examples/hello"
	"github.com/devgate/devgate/peers"
	mdns "github.com/miekg/dns"
)

// MaxProxyConns bounds connections `devgate proxy` forwards at once.
const MaxProxyConns = 1024

func openClient(e *env, path string) (*client.Client, error) {
	if path == "" {
		return nil, errors.New("pass the WireGuard config to use with --config FILE (from `devgate wireguard create`)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read WireGuard config: %w", err)
	}
	cfg, err := peers.ParseConfig(path, data)
	if err != nil {
		return nil, err
	}
	return client.New(cfg, nil)
}

func runDig(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "dig")
	conf := fs.String("config", "", "wg-quick config file of the peer to ask as")
	short := fs.Bool("short", false, "print only the answers' data, as dig +short")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errors.New("usage: devgate dig NAME [TYPE] --config laptop.conf")
	}
	qtype := mdns.TypeAAAA
	if len(pos) == 2 {
		t, ok := mdns.StringToType[strings.ToUpper(pos[1])]
		if !ok {
			return fmt.Errorf("unknown record type %q; try AAAA, TXT, A or SOA", pos[1])
		}
		qtype = t
	}
	c, err := openClient(e, *conf)
	if err != nil {
		return err
	}
	defer c.Close()
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(pos[0]), qtype)
	q.RecursionDesired = true
	r, err := c.Exchange(ctx, q)
	if err != nil {
		return fmt.Errorf("query %s through the tunnel: %w (is the gateway running, and the config's Endpoint reachable?)", pos[0], err)
	}
	if *short {
		for _, rr := range r.Answer {
			hdr := rr.Header().String()
			fmt.Fprintln(e.stdout, strings.TrimSpace(strings.TrimPrefix(rr.String(), hdr)))
		}
		return nil
	}
	fmt.Fprintln(e.stdout, r.String())
	return nil
}

func runProxy(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "proxy")
	conf := fs.String("config", "", "wg-quick config file of the peer to connect as")
	bind := fs.String("bind", "127.0.0.1", "local address to listen on")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: devgate proxy LOCAL_PORT:REMOTE_HOST:REMOTE_PORT --config laptop.conf")
	}
	local, remote, err := splitProxySpec(pos[0])
	if err != nil {
		return err
	}
	c, err := openClient(e, *conf)
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := net.Listen("tcp", net.JoinHostPort(*bind, local))
	if err != nil {
		return fmt.Errorf("listen on %s:%s: %w; choose another local port", *bind, local, err)
	}
	fmt.Fprintf(e.stdout, "Proxying %s to %s through the tunnel\n", l.Addr(), remote)
	go func() { <-ctx.Done(); l.Close() }()
	sem := make(chan struct{}, MaxProxyConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case sem <- struct{}{}:
		default:
			conn.Close() // over the bound: refuse rather than queue without end
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer conn.Close()
			up, err := c.DialContext(ctx, "tcp", remote)
			if err != nil {
				fmt.Fprintf(e.stderr, "proxy: dial %s: %v\n", remote, err)
				return
			}
			defer up.Close()
			splice(conn, up)
		}()
	}
}

func splitProxySpec(s string) (local, remote string, err error) {
	lp, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("%q: want LOCAL_PORT:REMOTE_HOST:REMOTE_PORT", s)
	}
	if n, err := strconv.Atoi(lp); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("%q: local port must be 0..65535", s)
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return "", "", fmt.Errorf("%q: want LOCAL_PORT:REMOTE_HOST:REMOTE_PORT", s)
	}
	host := strings.Trim(rest[:i], "[]")
	return lp, net.JoinHostPort(host, rest[i+1:]), nil
}

// splice copies both ways until both directions end.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

func runHello(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "hello")
	addr := fs.String("listen", "", "address to listen on (default :$PORT, else :80)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *addr == "" {
		if p := os.Getenv("PORT"); p != "" {
			*addr = ":" + p
		} else {
			*addr = ":80"
		}
	}
	return hello.Run(ctx, *addr, func(f string, a ...any) { fmt.Fprintf(e.stderr, f+"\n", a...) })
}
