package machines

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address nobody listens on (for now).
func freeAddr(t testing.TB) netip.AddrPort {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	return addr
}

func TestWaitReadyTimesOut(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := WaitReady(ctx, addr)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addr.String()) {
		t.Errorf("err = %v, want deadline naming %v", err, addr)
	}
}

func TestWaitReadyLateListener(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	listening := make(chan net.Listener, 1)
	go func() {
		time.Sleep(30 * time.Millisecond) // let WaitReady fail a few times first
		l, err := net.Listen("tcp4", addr.String())
		if err != nil {
			t.Error(err)
		}
		listening <- l
	}()
	if err := WaitReady(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if l := <-listening; l != nil {
		l.Close()
	}
}
