package tunnel

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// message builds a wireguard-go message of the given type and size with
// index at bytes 4-8.
func message(typ uint32, size int, index uint32) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint32(b[4:8], index)
	return b
}

func transport(index uint32, size int) []byte {
	return message(device.MessageTransportType, size, index)
}

func batch(msgs ...[]byte) ([][]byte, []int) {
	sizes := make([]int, len(msgs))
	bufs := make([][]byte, len(msgs))
	for i, m := range msgs {
		bufs[i] = append(m, make([]byte, 64)...) // room past the datagram, as wireguard-go's buffers have
		sizes[i] = len(m)
	}
	return bufs, sizes
}

// fakeTUN takes every write; while hold is set, writes wait for it to be
// closed. Only Write is used: the gate's accounting is the subject here,
// the netstack is not.
type fakeTUN struct {
	tun.Device
	hold chan struct{}
}

func (d fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	if d.hold != nil {
		<-d.hold
	}
	return len(bufs), nil
}

// written writes the decrypted packets of the given indices, as
// wireguard-go's sequential receiver does: header in front, packet at 16.
func written(t *testing.T, g *inflight, dev tun.Device, indices ...uint32) {
	t.Helper()
	bufs := make([][]byte, len(indices))
	for i, idx := range indices {
		bufs[i] = transport(idx, device.MessageTransportOffsetContent+60)
	}
	if _, err := g.write(dev, bufs, device.MessageTransportOffsetContent); err != nil {
		t.Fatal(err)
	}
}

func TestInflightCountsPerSession(t *testing.T) {
	g := newInflight()
	dev := fakeTUN{}
	// Before devgate sent a handshake, no index is its own: forged
	// transport datagrams never count.
	bufs, sizes := batch(transport(7, 1452), transport(7, 1452))
	g.countReceived(bufs, sizes, len(bufs))
	if got := g.total.Load(); got != 0 {
		t.Fatalf("count = %d after datagrams for an unknown index, want 0", got)
	}

	// Our response names index 7, our initiation index 9.
	g.note([][]byte{message(device.MessageResponseType, device.MessageResponseSize, 7),
		message(device.MessageInitiationType, device.MessageInitiationSize, 9), transport(11, 100)})
	bufs, sizes = batch(
		transport(7, 1452),
		transport(7, device.MessageKeepaliveSize), // never written
		transport(9, 600),
		transport(11, 600), // an index only seen in a transport message
		message(device.MessageInitiationType, device.MessageInitiationSize, 7),
		transport(7, 1452),
	)
	g.countReceived(bufs, sizes, len(bufs))
	if got := g.total.Load(); got != 3 {
		t.Fatalf("count = %d, want 3 (two for index 7, one for 9)", got)
	}
	g.countReceived(bufs, sizes, 1) // only the first n count
	if got := g.total.Load(); got != 4 {
		t.Fatalf("count = %d after a batch of 1, want 4", got)
	}

	// Writes come off their own session: index 11's packet and a third of
	// index 9's, never counted, take nothing from the others.
	written(t, g, dev, 7, 11, 9, 9, 7)
	if got := g.total.Load(); got != 1 {
		t.Fatalf("count = %d after writes, want 1 (index 7's third)", got)
	}
	written(t, g, dev, 7)
	if got, active := g.total.Load(), len(g.active); got != 0 || active != 0 {
		t.Fatalf("count = %d, %d sessions active after every datagram was written, want 0, 0", got, active)
	}
}

func TestInflightSessionsRotate(t *testing.T) {
	g := newInflight()
	response := func(idx uint32) [][]byte {
		return [][]byte{message(device.MessageResponseType, device.MessageResponseSize, idx)}
	}
	one := func() int64 {
		bufs, sizes := batch(transport(1, 1452))
		g.countReceived(bufs, sizes, 1)
		return g.total.Load()
	}
	// aged makes the current generation sessionRotation old.
	aged := func() { g.rotated = g.rotated.Add(-sessionRotation - time.Second) }

	g.note(response(1))
	if one() != 1 {
		t.Fatal("index 1 not counted right after our response named it")
	}
	// The next handshake a rotation later moves index 1 to the previous
	// generation; one more drops it, and the counts it held.
	aged()
	g.note(response(2))
	if one() != 2 {
		t.Error("index 1 not counted one rotation later")
	}
	aged()
	g.note(response(3))
	if got := one(); got != 0 {
		t.Errorf("count = %d two rotations later, want 0", got)
	}
	// A generation holds at most sessionsMax indices, so two generations
	// bound the memory.
	for i := range uint32(2*sessionsMax + 10) {
		g.note([][]byte{message(device.MessageInitiationType, device.MessageInitiationSize, 100+i)})
	}
	if n := len(g.cur) + len(g.prev); n > 2*sessionsMax {
		t.Errorf("%d indices held, want at most %d", n, 2*sessionsMax)
	}
	// A full generation is not rotated early: index 2, in the previous
	// one, is still counted; the indices beyond the full one are not.
	before := g.total.Load()
	bufs, sizes := batch(transport(2, 1452), transport(100+2*sessionsMax+9, 1452))
	g.countReceived(bufs, sizes, 2)
	if got := g.total.Load() - before; got != 1 {
		t.Errorf("%d counted of index 2 and an index beyond a full generation, want 1", got)
	}
}

// fill counts n datagrams of session idx.
func fill(g *inflight, idx uint32, n int) {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = transport(idx, 1452)
	}
	bufs, sizes := batch(msgs...)
	g.countReceived(bufs, sizes, n)
}

// waitAsync runs g.wait in a goroutine; the channel closes when it returns.
func waitAsync(g *inflight, closing chan struct{}) chan struct{} {
	done := make(chan struct{})
	go func() {
		g.wait(stoppedTimer(), closing)
		close(done)
	}()
	for g.waiting.Load() == 0 {
		select {
		case <-done:
			return done
		default:
			time.Sleep(10 * time.Microsecond)
		}
	}
	return done
}

// servedBeside counts n datagrams of session 2, which takes the count over
// the limit, and waits while 50 of them are written and then no more, as
// when session 2 is served and the others' datagrams were dropped.
func servedBeside(t *testing.T, g *inflight, dev tun.Device, closing chan struct{}, n int) {
	t.Helper()
	fill(g, 2, n)
	done := waitAsync(g, closing)
	for range 50 {
		written(t, g, dev, 2)
	}
	<-done
}

// TestInflightWait covers how a wait ends: not at all at the limit; when
// writes leave half; when a session saw nothing written for two windows
// while another progressed (written off; ungated the second time), or
// while none did; never while the session's write is under way; at Close.
func TestInflightWait(t *testing.T) {
	g := newInflight()
	dev := fakeTUN{}
	closing := make(chan struct{})
	g.note([][]byte{message(device.MessageResponseType, device.MessageResponseSize, 1),
		message(device.MessageResponseType, device.MessageResponseSize, 2)})

	fill(g, 1, inflightLimit)
	<-waitAsync(g, closing) // at the limit: no wait
	if d, w := g.drained.Load(), g.writtenOff.Load(); d != 0 || w != 0 {
		t.Fatalf("drained, written off = %d, %d at the limit, want 0, 0", d, w)
	}

	// Writes that leave more than half the limit do not end a wait.
	fill(g, 1, 100)
	done := waitAsync(g, closing)
	for range 22 {
		written(t, g, dev, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	}
	select {
	case <-done:
		if g.writtenOff.Load() > 0 {
			t.Skip("this goroutine was stalled past inflightStall; the write-off path ran instead")
		}
		t.Fatalf("wait ended with %d counted, above half the limit", g.total.Load())
	default:
	}
	written(t, g, dev, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) // 126 left
	<-done
	if g.writtenOff.Load() > 0 {
		t.Skip("this goroutine was stalled past inflightStall; the write-off path ran instead")
	}
	if d := g.drained.Load(); d != 1 {
		t.Errorf("drained = %d, want 1", d)
	}

	// Session 1's 126 datagrams were dropped by wireguard-go, say; session
	// 2 is served. Once session 1 saw nothing written for two windows, it
	// is written off: a first strike, still gated.
	servedBeside(t, g, dev, closing, 200)
	if w, got := g.writtenOff.Load(), g.total.Load(); w != 1 || got != 150 {
		if got == 0 {
			t.Skip("this goroutine was stalled past inflightStall before session 2's writes")
		}
		t.Fatalf("written off = %d, count = %d after session 1 stalled, want 1, 150 (session 2's)", w, got)
	}
	fill(g, 1, 10)
	if got := g.total.Load(); got != 160 {
		t.Fatalf("count = %d after session 1's first write-off and 10 more, want 160", got)
	}
	for range 150 {
		written(t, g, dev, 2)
	}
	// A second write-off within strikeWindow ungates session 1.
	servedBeside(t, g, dev, closing, 300)
	if w, got := g.writtenOff.Load(), g.total.Load(); w != 2 || got != 250 {
		if got == 0 {
			t.Skip("this goroutine was stalled past inflightStall before session 2's writes")
		}
		t.Fatalf("written off = %d, count = %d after session 1 stalled again, want 2, 250", w, got)
	}
	fill(g, 1, 10)
	if got := g.total.Load(); got != 250 {
		t.Errorf("session 1 counted again after two write-offs: count %d, want 250", got)
	}
	for range 250 {
		written(t, g, dev, 2)
	}

	// With no session progressing at all and no write under way, the
	// wait ends after two windows, and the session takes a strike.
	g.note([][]byte{message(device.MessageResponseType, device.MessageResponseSize, 3)})
	fill(g, 3, inflightLimit+1)
	start := time.Now()
	<-waitAsync(g, closing)
	if w, got := g.writtenOff.Load(), g.total.Load(); w != 3 || got != 0 {
		t.Fatalf("written off = %d, count = %d after a stall, want 3, 0", w, got)
	}
	if el := time.Since(start); el < 2*inflightStall {
		t.Errorf("gave up after %v, before two windows of inflightStall", el)
	}
	fill(g, 3, 5)
	if got := g.total.Load(); got != 5 {
		t.Errorf("session 3 counted %d of 5 after its first strike, want 5", got)
	}
	written(t, g, dev, 3, 3, 3, 3, 3)

	// A session with a write under way is not judged, however long the
	// write takes: the netstack is slow, and the loop waits for it. Once
	// the write is done and no more come, the rest is written off.
	g.note([][]byte{message(device.MessageResponseType, device.MessageResponseSize, 4)})
	held := fakeTUN{hold: make(chan struct{})}
	fill(g, 4, inflightLimit+1)
	wrote := make(chan error)
	go func() {
		_, err := g.write(held, [][]byte{transport(4, device.MessageTransportOffsetContent+60)}, device.MessageTransportOffsetContent)
		wrote <- err
	}()
	for {
		g.mu.Lock()
		w := g.lookupLocked(4).writing
		g.mu.Unlock()
		if w > 0 {
			break
		}
		time.Sleep(10 * time.Microsecond)
	}
	done = waitAsync(g, closing)
	time.Sleep(5 * inflightStall)
	select {
	case <-done:
		t.Fatal("wait ended while the session's write was under way")
	default:
	}
	close(held.hold)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	<-done
	if w, got := g.writtenOff.Load(), g.total.Load(); w != 4 || got != 0 {
		t.Errorf("written off = %d, count = %d, want 4, 0", w, got)
	}
	fill(g, 4, 5)
	if got := g.total.Load(); got != 5 {
		t.Errorf("session 4 counted %d of 5 after its first strike, want 5", got)
	}
	written(t, g, dev, 4, 4, 4, 4, 4)

	// Close ends a wait.
	fill(g, 4, inflightLimit+1)
	close(closing)
	<-waitAsync(g, closing)
}

// BenchmarkInflightCount is the gate's cost on the receive path: one
// batch of 128 full-sized datagrams of one session counted, then written.
func BenchmarkInflightCount(b *testing.B) {
	g := newInflight()
	g.note([][]byte{message(device.MessageResponseType, device.MessageResponseSize, 7)})
	msgs := make([][]byte, 128)
	for i := range msgs {
		msgs[i] = transport(7, 1452)
	}
	bufs, sizes := batch(msgs...)
	dev := fakeTUN{}
	b.ReportAllocs()
	for b.Loop() {
		g.countReceived(bufs, sizes, len(bufs))
		if _, err := g.write(dev, bufs, device.MessageTransportOffsetContent); err != nil {
			b.Fatal(err)
		}
	}
}
