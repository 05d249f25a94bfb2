package dns

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// heldConn is a real UDP socket whose writes wait until released, as a
// busy netstack's would.
type heldConn struct {
	net.PacketConn
	release chan struct{}
}

func (c *heldConn) WriteTo(b []byte, to net.Addr) (int, error) {
	<-c.release
	return c.PacketConn.WriteTo(b, to)
}

func listenUDP(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// receive reads n datagrams from pc and returns them as a set.
func receive(t *testing.T, pc net.PacketConn, n int) map[string]bool {
	t.Helper()
	got := make(map[string]bool)
	buf := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range n {
		k, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		got[string(buf[:k])] = true
	}
	return got
}

// TestReplyQueue: replies written from many goroutines all arrive, each
// as it was when written (the queue copies); those queued when Close is
// called are sent before the socket closes; later writes fail with
// net.ErrClosed; Close may be called twice.
func TestReplyQueue(t *testing.T) {
	client := listenUDP(t)
	held := &heldConn{PacketConn: listenUDP(t), release: make(chan struct{})}
	q := newReplyQueue(held)

	const n = 100 // fewer than replyQueueLen plus the one in the writer's hands
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := []byte(strconv.Itoa(i))
			if _, err := q.WriteTo(b, client.LocalAddr()); err != nil {
				t.Error(err)
			}
			copy(b, "xxxx") // the caller may reuse its buffer at once
		}()
	}
	wg.Wait() // all queued, none sent: the socket is held
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	close(held.release)
	got := receive(t, client, n)
	for i := range n {
		if !got[strconv.Itoa(i)] {
			t.Fatalf("reply %d queued before Close was not sent; got %v", i, got)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteTo([]byte("late"), client.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo after Close: %v, want net.ErrClosed", err)
	}
	q.Close() // as miekg/dns and Server.Close both do
}
