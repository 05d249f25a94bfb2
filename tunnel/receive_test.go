package tunnel

import (
	"net"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// TestReceivePathWithholds drives lazyBind's receive function over a real
// UDP socket, with no checker draining its queue, and checks each way an
// initiation can go: withheld and queued, or passed on unqueued when the
// queue is full or the rate is spent (wireguard-go alone has it, so its
// cookie replies still work under a flood); and a handed-back one is
// returned before any read.
func TestReceivePathWithholds(t *testing.T) {
	gwKey, peer := newKey(t), newKey(t)
	gw := gwKey.PublicKey()
	tn := &Tunnel{responder: newResponder(gwKey), closing: make(chan struct{}), inflight: newInflight(),
		checks: make(chan heldInitiation, checkQueue), inject: make(chan heldInitiation, injectQueue)}
	// No refill: each token taken shows in Tokens().
	tn.responder.limit = rate.NewLimiter(0, 2)

	bind := lazyBind{Bind: conn.NewStdNetBind(), t: tn}
	fns, port, err := bind.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer bind.Close()
	laptop, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatal(err)
	}
	defer laptop.Close()
	laptopEP := &conn.StdNetEndpoint{AddrPort: laptop.LocalAddr().(*net.UDPAddr).AddrPort()}

	batch := bind.BatchSize()
	bufs, sizes, eps := make([][]byte, batch), make([]int, batch), make([]conn.Endpoint, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}
	// receive sends msg from the laptop (nil: sends nothing) and returns
	// what one call of the IPv4 receive function gives wireguard-go.
	receive := func(msg []byte) (n int) {
		t.Helper()
		if msg != nil {
			if _, err := laptop.Write(msg); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			n, err = fns[0](bufs, sizes, eps)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			bind.Close()
			<-done
			t.Fatal("the receive function did not return")
		}
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// passed reports whether the batch gave wireguard-go msg whole.
	passed := func(n int, msg []byte) bool {
		return n == 1 && sizes[0] == len(msg) && string(bufs[0][:sizes[0]]) == string(msg)
	}
	queued := func() (heldInitiation, bool) {
		select {
		case h := <-tn.checks:
			return h, true
		default:
			return heldInitiation{}, false
		}
	}

	other := make([]byte, device.MessageInitiationSize) // right size, wrong type and MAC1
	other[0] = device.MessageTransportType
	if n := receive(other); !passed(n, other) {
		t.Fatalf("a datagram that is not an initiation: n=%d size=%d, want it passed on", n, sizes[0])
	}
	if _, ok := queued(); ok {
		t.Fatal("a datagram that is not an initiation was queued for the checker")
	}

	first := initiation(t, gw, peer.PublicKey(), &peer)
	if n := receive(first); n != 1 || sizes[0] != 0 {
		t.Fatalf("an initiation: n=%d size=%d, want it withheld (size 0)", n, sizes[0])
	}
	h, ok := queued()
	if !ok || string(h.msg[:]) != string(first) || h.ep == nil || h.ep.DstToString() != laptopEP.DstToString() {
		t.Fatalf("the withheld initiation was not queued with its sender: %v %v", ok, h.ep)
	}
	if got := tn.responder.limit.Tokens(); got != 1 {
		t.Fatalf("rate tokens after one queued initiation = %v, want 1", got)
	}

	// A full queue: passed on unqueued, and no rate token taken.
	held := 0
	for len(tn.checks) < cap(tn.checks) {
		tn.checks <- heldInitiation{}
		held++
	}
	second := initiation(t, gw, peer.PublicKey(), &peer)
	if n := receive(second); !passed(n, second) {
		t.Fatalf("an initiation with the checker's queue full: n=%d size=%d, want it passed on", n, sizes[0])
	}
	if len(tn.checks) != held {
		t.Fatalf("the queue holds %d, want the %d put there", len(tn.checks), held)
	}
	if got := tn.responder.limit.Tokens(); got != 1 {
		t.Fatalf("rate tokens = %v after the full queue, want 1 still", got)
	}
	for range held {
		<-tn.checks
	}
	third := initiation(t, gw, peer.PublicKey(), &peer)
	if n := receive(third); n != 1 || sizes[0] != 0 {
		t.Fatalf("an initiation with room again: n=%d size=%d, want it withheld", n, sizes[0])
	}
	if _, ok := queued(); !ok {
		t.Fatal("the initiation withheld with room again was not queued")
	}

	// The rate spent: passed on unqueued.
	fourth := initiation(t, gw, peer.PublicKey(), &peer)
	if n := receive(fourth); !passed(n, fourth) {
		t.Fatalf("an initiation over the rate: n=%d size=%d, want it passed on", n, sizes[0])
	}
	if _, ok := queued(); ok {
		t.Fatal("an initiation over the rate was queued")
	}

	// One the checker handed back comes first, with its endpoint, and
	// without a read (nothing was sent, so a read would block).
	tn.inject <- h
	if n := receive(nil); !passed(n, first) || eps[0] != h.ep {
		t.Fatalf("a handed-back initiation: n=%d size=%d, want the first initiation from its endpoint", n, sizes[0])
	}
}
