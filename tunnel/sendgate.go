package tunnel

import (
	"sync/atomic"
	"time"
)

// The send gate. wireguard-go reads a batch of packets from the netstack
// into 64 KiB buffers and holds each until it has sealed and sent it. When
// the netstack produces faster than one core seals (a download), those
// buffers pile up in wireguard-go's queues, as the receive side's did
// before the receive gate (inflight.go); with host GSO in the link a
// download held ~15 MiB more of them.
//
// The gate counts packets read from the netstack for loaded peers (those
// for no peer or an unloaded one wireguard-go drops at once) less the
// transport data messages sent (not keepalives or handshakes). Above
// sendLimit the TUN reader waits until sendLow are left, so the netstack's
// writers wait on the link's queue and TCP on its window. The count never
// goes below zero; and wireguard-go holds packets for a peer with no
// session yet, and drops some (a full staging queue, no endpoint), which
// are never sent, so a wait lasts at most sendStall and then forgets the
// count: the gate fails open.
const (
	sendLimit = 4 * 128 // four wireguard-go batches: the sealing keeps busy
	sendLow   = sendLimit / 2
	// sendStall bounds a wait: sealing 256 packets takes well under a
	// millisecond on the gateway's core.
	sendStall = 2 * time.Millisecond
)

type sendGate struct {
	limit   atomic.Int64  // sendLimit; lower in tests
	stall   time.Duration // sendStall; longer in tests that must not stall
	inside  atomic.Int64  // read from the netstack, not yet sent
	waiting atomic.Bool
	wake    chan struct{} // one token: sends reached sendLow while the reader waited

	drained, forgotten atomic.Uint64
}

func newSendGate() *sendGate {
	g := &sendGate{wake: make(chan struct{}, 1), stall: sendStall}
	g.limit.Store(sendLimit)
	return g
}

// read counts n packets wireguard-go read from the netstack.
func (g *sendGate) read(n int) { g.inside.Add(int64(n)) }

// sent counts n datagrams wireguard-go sent.
func (g *sendGate) sent(n int) {
	for {
		v := g.inside.Load()
		left := max(v-int64(n), 0)
		if g.inside.CompareAndSwap(v, left) {
			if left <= g.limit.Load()/2 && g.waiting.Load() {
				select {
				case g.wake <- struct{}{}:
				default:
				}
			}
			return
		}
	}
}

// wait holds the TUN reader while more than the limit (sendLimit) are
// inside wireguard-go, until half are left (sendLow), the link closes, or
// g.stall passes (then the count is forgotten).
func (g *sendGate) wait(timer *time.Timer, closing <-chan struct{}) {
	limit := g.limit.Load()
	if g.inside.Load() <= limit {
		return
	}
	g.waiting.Store(true)
	defer g.waiting.Store(false)
	select { // a token left from an earlier wait
	case <-g.wake:
	default:
	}
	timer.Reset(g.stall)
	defer timer.Stop()
	for g.inside.Load() > limit/2 {
		select {
		case <-g.wake:
		case <-timer.C:
			g.inside.Store(0)
			g.forgotten.Add(1)
			return
		case <-closing:
			return
		}
	}
	g.drained.Add(1)
}

// SendGateStats counts the send gate's waits by how they ended.
type SendGateStats struct{ Drained, Forgotten uint64 }

// SendGate reports the send gate's waits so far.
func (t *Tunnel) SendGate() SendGateStats {
	return SendGateStats{Drained: t.sendGate.drained.Load(), Forgotten: t.sendGate.forgotten.Load()}
}
