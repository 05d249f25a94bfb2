package netstack

import (
	"context"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"golang.org/x/sync/semaphore"
)

// outboundSegments bounds what the stack has sent that wireguard-go has
// not read yet, in link packets: a TCP packet of up to 64 KiB counts the
// segments it will be cut into (gso.go). When it is full the stack's
// writer waits for the reader (backpressure, as a real NIC's ring would
// push back) rather than dropping, so a burst never turns into
// retransmissions.
//
// It is one wireguard-go batch, not more, because a channel send does not
// yield: a sender goroutine fills the whole queue before wireguard-go's
// reader runs. With 1,024 packets one download stream moved in 1.4 MB bursts,
// the gateway and the laptop taking turns to idle (ping RTT 13 ms under
// load); with 128 the encryption of one batch overlaps the stack's
// building of the next, and the same download ran at 1.45-1.51 Gbit/s
// instead of 0.78 (bench/run, A/B). Bounded in stack packets, 128 of
// 64 KiB brought the turn-taking back (docs/benchmarks.md).
const outboundSegments = batchSize

// groBucketSize is gVisor's stack/gro bucket capacity (unexported there).
const groBucketSize = 8

// batchSize is how many packets wireguard-go moves per Read or Write call.
const batchSize = 128

// link is both halves of the NIC: gVisor's stack.LinkEndpoint on one side and
// wireguard-go's tun.Device on the other.
type link struct {
	mtu    uint32
	out    chan *stack.PacketBuffer // outbound packets, each holding one reference
	room   *semaphore.Weighted      // outboundSegments, taken by WritePackets, given back by read
	done   chan struct{}            // closed by close
	closed context.Context          // done by close, for room's waiters
	cancel context.CancelFunc
	events chan tun.Event

	cut cutter // the packet read is cutting

	closeOnce sync.Once

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher

	// inspect decides whether an inbound packet may enter the stack.
	inspect func(pkt []byte) bool

	rxPackets, txPackets atomic.Uint64
	badChecksum          atomic.Uint64

	// acks holds bare ACKs briefly, so a reply carries them (ackhold.go).
	acks ackHolder

	// gros holds *gro.GRO engines. wireguard-go calls Write from one
	// goroutine per peer, and an engine is not safe for concurrent use, so
	// each Write takes one for the batch.
	gros sync.Pool
}

// tunDevice is the tun.Device view of a link. It is a separate type because
// tun.Device and stack.LinkEndpoint both have MTU and Close methods, with
// different signatures.
type tunDevice struct{ l *link }

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ tun.Device         = tunDevice{}
)

func newLink(mtu uint32, inspect func([]byte) bool) *link {
	l := &link{
		mtu:     mtu,
		out:     make(chan *stack.PacketBuffer, outboundSegments), // every packet is a segment or more
		room:    semaphore.NewWeighted(outboundSegments),
		done:    make(chan struct{}),
		events:  make(chan tun.Event, 1),
		inspect: inspect,
	}
	l.closed, l.cancel = context.WithCancel(context.Background())
	l.events <- tun.EventUp
	l.gros.New = func() any {
		g := new(gro.GRO)
		g.Init(true)
		return g
	}
	return l
}

// --- tun.Device: the wireguard-go side ---

func (t tunDevice) File() *os.File           { return nil }
func (t tunDevice) MTU() (int, error)        { return int(t.l.mtu), nil }
func (t tunDevice) Name() (string, error)    { return "devgate", nil }
func (t tunDevice) Events() <-chan tun.Event { return t.l.events }
func (t tunDevice) BatchSize() int           { return batchSize }
func (t tunDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return t.l.read(bufs, sizes, offset)
}
func (t tunDevice) Write(bufs [][]byte, offset int) (int, error) { return t.l.write(bufs, offset) }

// Close stops the tun.Device side. wireguard-go calls it when its device
// closes; the Stack calls it too. It is idempotent.
func (t tunDevice) Close() error {
	t.l.closeTUN()
	return nil
}

// Read blocks until at least one outbound packet is queued or a held ACK
// is due, then returns as many link packets as are ready, up to len(bufs).
func (l *link) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		select {
		case <-l.done:
			l.dropCut()
			return 0, os.ErrClosed
		default:
		}
		n, wake := l.acks.release(bufs, sizes, offset, 0)
		if n == 0 && l.cut.pkt == nil {
			select {
			case pkt := <-l.out:
				n = l.fill(bufs, sizes, offset, 0, pkt)
			case <-wake:
				continue
			case <-l.done:
				return 0, os.ErrClosed
			}
		}
		n = l.fill(bufs, sizes, offset, n, nil)
		if n == 0 {
			continue // all held
		}
		if n > 1 {
			pushOnlyLast(bufs[:n], sizes[:n], offset)
		}
		l.txPackets.Add(uint64(n))
		return n, nil
	}
}

// fill moves outbound packets into bufs from slot n on, first pkt if it is
// not nil and then whatever is queued, without waiting, and returns the new
// count. TCP packets are cut into segments (gso.go), a packet half cut
// when bufs run out is finished by the next read; bare ACKs may be held
// (ackhold.go). A packet larger than a buffer cannot happen with
// wireguard-go's 64 KiB buffers and our MTU; it is skipped rather than
// truncated.
func (l *link) fill(bufs [][]byte, sizes []int, offset, n int, pkt *stack.PacketBuffer) int {
	for n < len(bufs) {
		if l.cut.pkt == nil {
			if pkt == nil {
				select {
				case pkt = <-l.out:
				default:
					return n
				}
			}
			p := pkt
			pkt = nil
			if p.GSOOptions.Type == stack.GSONone {
				sz := copyPacket(bufs[n][offset:], p)
				p.DecRef()
				l.room.Release(1)
				if sz >= 0 && !l.acks.hold(bufs[n][offset:offset+sz]) {
					sizes[n] = sz
					n++
				}
				continue
			}
			if segs := segments(p); !l.cut.start(p, segs) {
				l.room.Release(int64(segs))
				continue
			}
		}
		segs := int64(l.cut.segs)
		sz, done := l.cut.cut(bufs[n][offset:])
		if sz < 0 {
			l.dropCut()
			continue
		}
		if done {
			l.room.Release(segs)
		}
		if !l.acks.hold(bufs[n][offset : offset+sz]) {
			sizes[n] = sz
			n++
		}
	}
	return n
}

// dropCut releases the packet being cut, if any, and the queue room it
// holds.
func (l *link) dropCut() {
	if l.cut.pkt != nil {
		l.room.Release(int64(l.cut.segs))
		l.cut.drop()
	}
}

// copyPacket copies pkt into dst without allocating and returns its size, or
// -1 when it does not fit.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) int {
	n := pkt.Size()
	if n > len(dst) {
		return -1
	}
	copyRange(dst[:n], pkt, 0)
	return n
}

// Write injects inbound packets (decrypted by wireguard-go) into the stack,
// after the isolation filter. Filtered packets are counted, not errors: a
// peer must not be able to make wireguard-go log or stop.
func (l *link) write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-l.done:
		return 0, os.ErrClosed
	default:
	}
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return len(bufs), nil
	}
	// GRO coalesces consecutive segments of one TCP flow within the batch
	// into one large segment, so the stack's per-segment work (demux,
	// endpoint lock, ACK decision) runs once per batch instead of per packet.
	g := l.gros.Get().(*gro.GRO)
	g.Dispatcher = d
	n := 0
	for _, b := range bufs {
		p := b[offset:]
		if !l.inspect(p) {
			continue
		}
		if !l4ChecksumOK(p) {
			l.badChecksum.Add(1)
			continue
		}
		l.acks.noteInbound(p)
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
		g.Enqueue(pkt)
		pkt.DecRef()
		n++
	}
	// gro.GRO.Flush (gVisor 2026-09) stops walking a bucket after the
	// first packet it delivers (removing a packet clears its next link),
	// so one call can leave packets held until the next batch. A bucket holds at most
	// groBucketSize packets; that many calls empty every bucket.
	for range groBucketSize {
		g.Flush()
	}
	g.Dispatcher = nil
	l.gros.Put(g)
	l.rxPackets.Add(uint64(n))
	return len(bufs), nil
}

func (l *link) closeTUN() {
	l.closeOnce.Do(func() {
		close(l.done)
		l.cancel()
		close(l.events)
	})
	l.drain()
}

// drain releases packets nobody will read.
func (l *link) drain() {
	for {
		select {
		case pkt := <-l.out:
			l.room.Release(int64(segments(pkt)))
			pkt.DecRef()
		default:
			return
		}
	}
}

// --- stack.LinkEndpoint: the gVisor side ---

// WritePackets queues packets for wireguard-go. It waits while the queue is
// full and fails only once the link is closed.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		select {
		case <-l.done:
			return n, &tcpip.ErrClosedForSend{}
		default:
		}
		segs := int64(segments(pkt))
		if err := l.room.Acquire(l.closed, segs); err != nil {
			return n, &tcpip.ErrClosedForSend{}
		}
		pkt.IncRef()
		l.out <- pkt // room taken: never blocks
		n++
	}
	return n, nil
}

func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

func (l *link) SetMTU(uint32)                           {} // fixed at creation
func (l *link) MaxHeaderLength() uint16                 { return 0 }
func (l *link) LinkAddress() tcpip.LinkAddress          { return "" }
func (l *link) SetLinkAddress(tcpip.LinkAddress)        {}
func (l *link) Wait()                                   {}
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (l *link) AddHeader(*stack.PacketBuffer)           {}
func (l *link) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *link) SetOnCloseAction(func())                 {}

func (l *link) MTU() uint32 { return l.mtu }

// Capabilities says inbound checksums are already checked: write checks
// each packet (l4ChecksumOK) before GRO, whose merged segments keep the
// first segment's checksum and would fail gVisor's own check.
func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// GSOMaxSize and SupportedGSO make the link a stack.GSOEndpoint that
// segments TCP itself (gso.go): TCP keeps one send-queue segment per up to
// 64 KiB instead of per MTU (less bookkeeping per ACK) and sends it to us
// whole.
func (l *link) GSOMaxSize() uint32               { return gsoMaxSize }
func (l *link) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// Close is called by gVisor when the NIC is removed.
func (l *link) Close() { l.closeTUN() }
