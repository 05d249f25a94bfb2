package netstack

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// reply turns an inbound segment made by tcpSeg into the gateway's answer
// on the same flow: addresses and ports swapped, acknowledging ack.
func reply(p []byte, ack uint32) []byte {
	r := append([]byte(nil), p...)
	copy(r[8:24], p[24:40])
	copy(r[24:40], p[8:24])
	copy(r[40:42], p[42:44])
	copy(r[42:44], p[40:42])
	binary.BigEndian.PutUint32(r[40+8:], ack)
	return r
}

func heldCount(h *ackHolder) int { return int(h.nHeld.Load()) }

func TestAckHolder(t *testing.T) {
	const ack = header.TCPFlagAck
	const psh = header.TCPFlagAck | header.TCPFlagPsh
	request := tcpSeg(40000, 80, 1000, psh, 100) // a small pushed segment
	bareAck := reply(tcpSeg(40000, 80, 5000, ack, 0), 1100)
	response := reply(tcpSeg(40000, 80, 5000, psh, 600), 1100)

	t.Run("the response carries the ACK", func(t *testing.T) {
		var h ackHolder
		h.noteInbound(request)
		if !h.hold(bareAck) {
			t.Fatal("bare ACK of a small request was not held")
		}
		if h.hold(response) {
			t.Fatal("response held")
		}
		if heldCount(&h) != 0 {
			t.Errorf("held ACKs after the response = %d, want 0 (superseded)", heldCount(&h))
		}
	})
	t.Run("an ACK without a reply leaves when due", func(t *testing.T) {
		var h ackHolder
		h.noteInbound(request)
		if !h.hold(bareAck) {
			t.Fatal("bare ACK not held")
		}
		bufs := [][]byte{make([]byte, 100)}
		sizes := make([]int, 1)
		n, wake := h.release(bufs, sizes, 0, 0)
		for n == 0 && wake != nil {
			<-wake
			n, wake = h.release(bufs, sizes, 0, 0)
		}
		if n != 1 || string(bufs[0][:sizes[0]]) != string(bareAck) {
			t.Fatalf("released %d packets, want the held ACK", n)
		}
		if wake != nil || heldCount(&h) != 0 {
			t.Error("ACK still held after release")
		}
	})
	t.Run("bulk segments are acknowledged at once", func(t *testing.T) {
		var h ackHolder
		h.noteInbound(tcpSeg(40000, 80, 1000, psh, 1392)) // full-sized
		h.noteInbound(tcpSeg(40000, 80, 1000, ack, 100))  // not pushed
		if h.hold(bareAck) {
			t.Error("ACK of a full-sized or unpushed segment held")
		}
	})
	t.Run("a second bare ACK releases the first", func(t *testing.T) {
		var h ackHolder
		h.noteInbound(request)
		h.hold(bareAck)
		h.noteInbound(tcpSeg(40000, 80, 1100, psh, 100))
		if h.hold(reply(tcpSeg(40000, 80, 5000, ack, 0), 1200)) {
			t.Error("second bare ACK held: a bulk flow's ACK clock could stall")
		}
		if heldCount(&h) != 0 {
			t.Error("first ACK still held")
		}
	})
	t.Run("SACK, an older ACK or another flow", func(t *testing.T) {
		var h ackHolder
		h.noteInbound(request)
		sack := append(reply(tcpSeg(40000, 80, 5000, ack, 0), 1100), make([]byte, 12)...)
		sack[40+12] = 11 << 4 // 44-byte header: timestamps and one SACK block
		binary.BigEndian.PutUint16(sack[4:], 44)
		if h.hold(sack) {
			t.Error("ACK with SACK blocks held")
		}
		h.noteInbound(request)
		if h.hold(reply(tcpSeg(40000, 80, 5000, ack, 0), 1050)) {
			t.Error("ACK short of the request's end held")
		}
		h.noteInbound(request)
		if h.hold(reply(tcpSeg(40001, 80, 5000, ack, 0), 1100)) {
			t.Error("another flow's ACK held")
		}
		// A retransmitted request below data already acknowledged, or
		// data that filled a gap: the ACK goes at once.
		h.noteInbound(request)
		if h.hold(reply(tcpSeg(40000, 80, 5000, ack, 0), 1500)) {
			t.Error("ACK beyond the request's end held")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		var h ackHolder
		for i := range maxExpected + 10 {
			h.noteInbound(tcpSeg(uint16(i), 80, 1000, psh, 100))
		}
		if n := len(h.flows); n > maxExpected {
			t.Errorf("expected flows = %d, want at most %d", n, maxExpected)
		}
		h = ackHolder{}
		for i := range maxHeld + 10 {
			h.noteInbound(tcpSeg(uint16(i), 80, 1000, psh, 100))
		}
		held := 0
		for i := range maxHeld + 10 {
			if h.hold(reply(tcpSeg(uint16(i), 80, 5000, ack, 0), 1100)) {
				held++
			}
		}
		if held != maxHeld || heldCount(&h) != maxHeld {
			t.Errorf("held %d ACKs of %d, want %d", held, maxHeld+10, maxHeld)
		}
		// A flood of new flows clears the waiting ones but keeps the
		// held ACKs' flows, so their responses still carry them.
		for i := range maxExpected {
			h.noteInbound(tcpSeg(uint16(i), 81, 1000, psh, 100))
		}
		if h.hold(reply(tcpSeg(0, 80, 5000, psh, 600), 1100)) || heldCount(&h) != maxHeld-1 {
			t.Errorf("after the flood a response did not carry its held ACK: %d held", heldCount(&h))
		}
	})
}

// TestAckHeldThroughStacks runs request/response and one-way traffic
// between real gVisor stacks: replies carry the held ACKs, and requests the
// service never answers are still acknowledged when the ACKs come due, so
// the peer never retransmits.
func TestAckHeldThroughStacks(t *testing.T) {
	gw, r := newTestStack(t, Config{})
	r.tcp[7] = echoHandler()
	got := make(chan int, 1)
	r.tcp[9] = handlerFunc(func(q TCPRequest) { // reads, never answers
		c, err := q.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	})
	p := newPeerStack(t, gw, testPeer)
	echo := dialWithin(t, p, 7, 20*time.Second)
	buf := make([]byte, 100)
	for i := range 20 {
		if _, err := echo.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(echo, buf); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
	}
	if s := gw.Stats(); s.ACKsCarried == 0 {
		t.Errorf("no reply of 20 carried its request's ACK (delayed: %d)", s.ACKsDelayed)
	}

	sink := dialWithin(t, p, 9, 20*time.Second)
	before := gw.Stats().ACKsDelayed
	for range 10 {
		if _, err := sink.Write(buf); err != nil {
			t.Fatal(err)
		}
		// One request at a time, as a client waiting on a slow service:
		// each held ACK comes due before the next request.
		time.Sleep(2 * ackDelay)
	}
	sink.Close()
	if n := <-got; n != 1000 {
		t.Fatalf("service read %d bytes, want 1000", n)
	}
	if d := gw.Stats().ACKsDelayed - before; d == 0 {
		t.Error("no held ACK was sent when due")
	}
	if n := p.s.Stats().TCP.Retransmits.Value(); n != 0 {
		t.Errorf("peer retransmitted %d segments: held ACKs were lost", n)
	}
}

// BenchmarkAckHolder measures the link's per-packet cost of holding ACKs:
// a request/response exchange (note the request, hold its ACK, let the
// response carry it) and an outbound packet of a flow with nothing held.
func BenchmarkAckHolder(b *testing.B) {
	const psh = header.TCPFlagAck | header.TCPFlagPsh
	request := tcpSeg(40000, 80, 1000, psh, 100)
	bareAck := reply(tcpSeg(40000, 80, 5000, header.TCPFlagAck, 0), 1100)
	response := reply(tcpSeg(40000, 80, 5000, psh, 600), 1100)
	bulk := reply(tcpSeg(40001, 80, 5000, psh, 1392), 1100)
	b.Run("exchange", func(b *testing.B) {
		var h ackHolder
		b.ReportAllocs()
		for range b.N {
			h.noteInbound(request)
			if !h.hold(bareAck) || h.hold(response) {
				b.Fatal("ACK not carried")
			}
		}
	})
	b.Run("other flow", func(b *testing.B) {
		var h ackHolder
		h.noteInbound(request) // one flow waiting, so the map is looked up
		b.ReportAllocs()
		for range b.N {
			if h.hold(bulk) {
				b.Fatal("bulk packet held")
			}
		}
	})
	b.Run("idle", func(b *testing.B) {
		var h ackHolder
		b.ReportAllocs()
		for range b.N {
			h.hold(bulk)
		}
	})
}
