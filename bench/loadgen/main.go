// Command loadgen is bench/run's load generator for what iperf3 and wrk do
// not cover. It runs inside the benchmark's laptop namespace and talks
// through the laptop's WireGuard interface like any program there:
//
//	loadgen dns -server [ADDR]:53 -name web.flycast -duration 10s
//	    private-name AAAA queries over UDP, many in flight, for a fixed
//	    time; prints "qps=N answered=N timeouts=N".
//	loadgen conns -addr [ADDR]:PORT -n 10000 -hold 30s
//	    opens N idle TCP connections, prints "open=N" once they are all up
//	    (or "open=N failed=M" when some could not be opened), and holds them
//	    until -hold passes or stdin closes.
//
// It is a benchmark tool: it must never import the gateway's packages, only
// speak the wire protocols a laptop would.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen dns|conns [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dns":
		err = runDNS(os.Args[2:])
	case "conns":
		err = runConns(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q; use dns or conns", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// maxInFlightPerSocket bounds outstanding queries per UDP socket; the
// 16-bit DNS ID is the key that matches replies to them.
const maxInFlightPerSocket = 1024

func runDNS(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	server := fs.String("server", "", "DNS server address, [v6]:53")
	name := fs.String("name", "web.flycast", "name to ask for (AAAA)")
	sockets := fs.Int("sockets", 8, "UDP sockets (source ports)")
	window := fs.Int("window", 32, "queries in flight per socket")
	duration := fs.Duration("duration", 10*time.Second, "how long to send")
	timeout := fs.Duration("timeout", time.Second, "when an unanswered query counts as lost")
	fs.Parse(args)
	if *server == "" {
		return errors.New("dns: -server is required")
	}
	if *window < 1 || *window > maxInFlightPerSocket {
		return fmt.Errorf("dns: -window must be 1..%d", maxInFlightPerSocket)
	}
	q := new(mdns.Msg).SetQuestion(mdns.Fqdn(*name), mdns.TypeAAAA)
	wire, err := q.Pack()
	if err != nil {
		return err
	}
	var answered, lost, bad atomic.Int64
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	for range *sockets {
		c, err := net.Dial("udp", *server)
		if err != nil {
			return fmt.Errorf("dns: %w", err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			dnsSocket(c, wire, *window, deadline, *timeout, &answered, &lost, &bad)
		}()
	}
	wg.Wait()
	fmt.Printf("qps=%.0f answered=%d timeouts=%d bad=%d\n", float64(answered.Load())/duration.Seconds(), answered.Load(), lost.Load(), bad.Load())
	if answered.Load() == 0 {
		return errors.New("dns: no answers; is the tunnel up and the name right?")
	}
	return nil
}

// dnsSocket keeps window queries in flight on c until deadline: each
// answer (or timeout) lets the next query go.
func dnsSocket(c net.Conn, wire []byte, window int, deadline time.Time, timeout time.Duration, answered, lost, bad *atomic.Int64) {
	q := append([]byte(nil), wire...)
	var id uint16
	send := func() {
		id++
		q[0], q[1] = byte(id>>8), byte(id)
		c.Write(q)
	}
	for range window {
		send()
	}
	buf := make([]byte, 1500)
	inFlight := window
	for inFlight > 0 {
		c.SetReadDeadline(time.Now().Add(timeout))
		n, err := c.Read(buf)
		switch {
		case err != nil:
			// Whatever is outstanding is lost; start a fresh window.
			lost.Add(int64(inFlight))
			inFlight = 0
			if time.Now().Before(deadline) {
				for range window {
					send()
				}
				inFlight = window
			}
			continue
		case n < 12 || buf[2]&0x80 == 0 || buf[3]&0xf != 0: // not a reply, or an error code
			bad.Add(1)
		default:
			answered.Add(1)
		}
		inFlight--
		if time.Now().Before(deadline) {
			send()
			inFlight++
		}
	}
}

// dialConcurrency bounds handshakes in flight: the gateway answers a peer's
// SYNs beyond its per-peer budget (64) with RST.
const dialConcurrency = 32

func runConns(args []string) error {
	fs := flag.NewFlagSet("conns", flag.ExitOnError)
	addr := fs.String("addr", "", "TCP address, [v6]:port")
	n := fs.Int("n", 10000, "connections")
	hold := fs.Duration("hold", time.Minute, "how long to hold them (stdin closing ends it sooner)")
	fs.Parse(args)
	if *addr == "" {
		return errors.New("conns: -addr is required")
	}
	conns := make([]net.Conn, 0, *n)
	var mu sync.Mutex
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, dialConcurrency)
	var wg sync.WaitGroup
	d := net.Dialer{Timeout: 10 * time.Second}
	for range *n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := d.DialContext(context.Background(), "tcp", *addr)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Printf("open=%d failed=%d first error: %v\n", len(conns), f, firstErr.Load())
	} else {
		fmt.Printf("open=%d\n", len(conns))
	}
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		c.Close()
	}
	return nil
}
