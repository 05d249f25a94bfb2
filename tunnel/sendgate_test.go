package tunnel

import (
	"testing"
	"time"
)

// TestSendGate covers each way a wait ends: below the limit it does not
// wait; above it, it waits until sends bring the count to sendLow, until
// the link closes, or for sendStall with nothing sent, after which the
// count is forgotten. Sends of what was never read (handshakes,
// keepalives) never take the count below zero.
func TestSendGate(t *testing.T) {
	timer := stoppedTimer()
	never := make(chan struct{})

	g := newSendGate()
	g.read(sendLimit)
	g.wait(timer, never) // at the limit: no wait
	if s := (SendGateStats{g.drained.Load(), g.forgotten.Load()}); s != (SendGateStats{}) {
		t.Fatalf("at the limit the gate waited: %+v", s)
	}

	// The drained case must not race the 2 ms stall on a loaded machine.
	g.stall = time.Hour
	g.read(100)
	done := make(chan struct{})
	go func() {
		g.wait(timer, never)
		close(done)
	}()
	for !g.waiting.Load() { // bounded by the test's timeout
		time.Sleep(time.Millisecond)
	}
	g.sent(sendLimit + 100 - sendLow - 1) // one above sendLow: still waiting
	select {
	case <-done:
		t.Fatal("the wait ended above sendLow")
	default:
	}
	g.sent(1)
	<-done
	if d, f := g.drained.Load(), g.forgotten.Load(); d != 1 || f != 0 {
		t.Fatalf("after sends to sendLow: drained %d, forgotten %d; want 1, 0", d, f)
	}

	g.sent(10 * sendLimit) // keepalives and handshakes
	if v := g.inside.Load(); v != 0 {
		t.Fatalf("count after sending more than was read: %d, want 0", v)
	}

	g.stall = sendStall
	g.read(sendLimit + 1)
	g.wait(timer, never) // nothing sent: forgotten after sendStall
	if f, v := g.forgotten.Load(), g.inside.Load(); f != 1 || v != 0 {
		t.Fatalf("after a stall: forgotten %d, count %d; want 1, 0", f, v)
	}

	g.read(sendLimit + 1)
	closing := make(chan struct{})
	close(closing)
	g.wait(timer, closing)
	if d, f := g.drained.Load(), g.forgotten.Load(); d != 1 || f != 1 {
		t.Fatalf("a closing link counted its wait: drained %d, forgotten %d", d, f)
	}
}
