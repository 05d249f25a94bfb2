package netstack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Delayed ACKs for request/response flows. gVisor acknowledges the segments
// it has processed at once (it has no delayed ACK), so a request from the
// laptop is answered first by a bare ACK and, a little later, by the
// response, which carries the same acknowledgment: two packets to encrypt,
// send, decrypt and process where a kernel sends one.
//
// The link therefore holds a bare ACK that answers a small pushed segment
// (a request) for up to ackDelay, and drops it if the flow sends anything
// that acknowledges as much first (the response). Bulk transfers keep their
// ACK clock: full-sized segments never make a flow eligible, at most one
// ACK per flow is held, and a second one releases it. RFC 1122 allows an
// ACK to be delayed up to 500 ms; Linux delays them 40 ms or more.
//
// Under wrk (50 connections, bench/run) every request's ACK was carried by
// its response, and the http handler served 11 % more requests a second.
const (
	// ackDelay bounds how long a bare ACK is held: longer than a loaded
	// gateway takes to answer (wrk's p99 through devgate is ~10 ms; with
	// 2 ms, three in four ACKs left alone), shorter than Linux's 40 ms,
	// which is how long a client that waits for the ACK before sending
	// more (Nagle, no TCP_NODELAY) may wait.
	ackDelay = 10 * time.Millisecond
	// smallSegment is the payload below which a pushed segment counts as a
	// request whose answer may carry its ACK.
	smallSegment = 1024
	// maxExpected and maxHeld bound the state a peer's traffic can create:
	// flows waiting for their ACK, and ACKs held.
	maxExpected = 4096
	maxHeld     = 256
	// maxHeldLen is the longest bare ACK held: an IPv6 header and a TCP
	// header with the timestamp option. Longer ones carry SACK blocks
	// (news of loss) and leave at once.
	maxHeldLen = 40 + 32
)

// flowKey names a TCP flow as the stack sends it: source address,
// destination address, source port, destination port (bytes 8-44 of an
// outbound IPv6 TCP packet).
type flowKey [36]byte

type heldAck struct {
	key flowKey
	ack uint32
	due time.Time
	n   int
	b   [maxHeldLen]byte
}

// ackHolder is the link's delayed-ACK state. noteInbound is called by
// wireguard-go's writers; hold and release by its single reader.
type ackHolder struct {
	mu    sync.Mutex
	flows map[flowKey]ackFlow
	held  []heldAck // oldest first; due times are in order
	timer *time.Timer

	nFlows, nHeld atomic.Int32 // len(flows), len(held): lock-free checks

	// carried counts held ACKs dropped because a later packet carried
	// them; delayed, those sent when due.
	carried, delayed atomic.Uint64
}

// ackFlow is a flow whose last small segment may be answered by a reply.
type ackFlow struct {
	want uint32 // the ACK that answers the segment
	held bool   // a bare ACK of this flow, acknowledging ack, is held
	ack  uint32
}

// noteInbound records an inbound TCP segment with PSH and a small payload:
// the bare ACK that answers it may wait for the reply.
func (h *ackHolder) noteInbound(p []byte) {
	seq, end, ok := tcpData(p)
	if !ok || end-seq >= smallSegment {
		return
	}
	if flags := header.TCPFlags(p[40+13]); flags&header.TCPFlagPsh == 0 || flags&(header.TCPFlagFin|header.TCPFlagRst|header.TCPFlagSyn) != 0 {
		return
	}
	var k flowKey
	copy(k[0:16], p[24:40]) // the reply's source is this packet's destination
	copy(k[16:32], p[8:24])
	copy(k[32:34], p[42:44])
	copy(k[34:36], p[40:42])
	h.mu.Lock()
	if h.flows == nil || len(h.flows) >= maxExpected {
		// Flows whose segment was never answered (a peer can make them
		// by the thousand) go; those with an ACK held stay.
		kept := make(map[flowKey]ackFlow, len(h.held)+1)
		for _, a := range h.held {
			if f, ok := h.flows[a.key]; ok {
				kept[a.key] = f
			}
		}
		h.flows = kept
	}
	f := h.flows[k]
	f.want = end
	h.flows[k] = f
	h.nFlows.Store(int32(len(h.flows)))
	h.mu.Unlock()
}

// hold inspects an outbound packet. It reports true when p is a bare ACK
// it keeps to send later, so the caller must not send it now. A packet of
// a flow with a held ACK that acknowledges as much replaces that ACK.
func (h *ackHolder) hold(p []byte) bool {
	if h.nFlows.Load() == 0 || len(p) < 60 || p[6] != ipProtoTCP {
		return false
	}
	k := flowKey(p[8:44])
	flags := header.TCPFlags(p[40+13])
	ack := binary.BigEndian.Uint32(p[40+8:])
	_, _, data := tcpData(p)
	bare := flags == header.TCPFlagAck && !data
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.flows[k]
	if !ok || flags&header.TCPFlagAck == 0 {
		return false
	}
	if f.held && !seqBefore(ack, f.ack) {
		// This packet says all the held one did: drop that one. A second
		// bare ACK is sent, not held, so a bulk flow's ACKs are thinned
		// at most to every other one.
		h.unhold(k)
		h.carried.Add(1)
		h.forget(k)
		return false
	}
	if seqBefore(ack, f.want) {
		return false // an earlier segment's ACK: the request's is to come
	}
	// Only the ACK of exactly the request waits. One past it acknowledges
	// data that filled a gap, which RFC 5681 wants sent at once.
	if !bare || f.held || ack != f.want || len(p) > maxHeldLen || len(h.held) >= maxHeld {
		h.forget(k)
		return false
	}
	a := heldAck{key: k, ack: ack, due: time.Now().Add(ackDelay), n: len(p)}
	copy(a.b[:], p)
	h.held = append(h.held, a)
	h.nHeld.Store(int32(len(h.held)))
	h.flows[k] = ackFlow{want: ack, held: true, ack: ack}
	return true
}

// unhold drops flow k's held ACK.
func (h *ackHolder) unhold(k flowKey) {
	for i := range h.held {
		if h.held[i].key == k {
			h.held = append(h.held[:i], h.held[i+1:]...)
			h.nHeld.Store(int32(len(h.held)))
			return
		}
	}
}

// forget drops flow k's state.
func (h *ackHolder) forget(k flowKey) {
	delete(h.flows, k)
	h.nFlows.Store(int32(len(h.flows)))
}

// release copies the held ACKs that are due into bufs from slot n on and
// returns the new count, and a channel that fires when the next one is due
// (nil if none is held).
func (h *ackHolder) release(bufs [][]byte, sizes []int, offset, n int) (int, <-chan time.Time) {
	if h.nHeld.Load() == 0 {
		return n, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	i := 0
	for ; i < len(h.held) && n < len(bufs) && !h.held[i].due.After(now); i++ {
		a := &h.held[i]
		sizes[n] = copy(bufs[n][offset:], a.b[:a.n])
		n++
		if f, ok := h.flows[a.key]; ok && f.held && f.ack == a.ack {
			if f.want == a.ack {
				h.forget(a.key)
			} else { // a newer small segment came meanwhile
				h.flows[a.key] = ackFlow{want: f.want}
			}
		}
	}
	h.held = append(h.held[:0], h.held[i:]...)
	h.nHeld.Store(int32(len(h.held)))
	h.delayed.Add(uint64(i))
	if len(h.held) == 0 {
		return n, nil
	}
	wait := h.held[0].due.Sub(now)
	if h.timer == nil {
		h.timer = time.NewTimer(wait)
	} else {
		h.timer.Reset(wait)
	}
	return n, h.timer.C
}

// seqBefore reports whether TCP sequence number a comes before b.
func seqBefore(a, b uint32) bool { return int32(a-b) < 0 }
