package tunnel

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// wireguard-go holds each datagram it receives in a 64 KiB buffer until the
// TUN (the netstack) has taken the decrypted packet. When the netstack is
// the slower side, as on a gateway with one core, the datagrams of a whole
// TCP window wait there: 1,000 to 1,500 full-sized packets in an upload,
// up to 94 MiB of buffers for 2 MiB of data. The receive gate below stops
// wireguard-go's receive loops while too many datagrams are inside it, so
// the backlog waits in the UDP socket's receive buffer instead, at about
// its own size.
//
// It counts datagrams per session (the receiver index of a transport
// message, which devgate's own handshake named), and the TUN's writes per
// session too: wireguard-go decrypts in place after the 16-byte header, so
// the index is still in front of each packet written. Datagrams
// wireguard-go drops unwritten (a failed open, a replayed counter, a source
// outside the peer's allowed IPs, an expired session) stay counted until a
// waiting loop sees their session have nothing written for two windows of
// inflightStall (see stalled): then its count is written off, and a
// session written off twice within strikeWindow is no longer counted at
// all. Whoever sends datagrams it knows will be dropped (a peer, or someone
// who read a session's index off the wire) costs the gate two stalls of
// about 4 ms per session, so per handshake; that session then passes
// ungated, as every datagram did before the gate.

// inflightLimit bounds the counted datagrams between the bind's receive and
// the TUN's write: 256 is 16 MiB of wireguard-go's buffers, two receive
// batches. A waiting loop resumes once half of it is left. Each receive
// loop (IPv4, IPv6) may add one more batch while another waits.
const inflightLimit = 256

// A waiting loop judges the sessions every inflightStall (see stalled).
const inflightStall = 2 * time.Millisecond

// strikeWindow is how close together two write-offs of a session must be
// for it to be ungated.
const strikeWindow = time.Minute

// session is one receiver index devgate handed out, as the gate counts it.
type session struct {
	out       int64  // datagrams counted, not yet written
	since     uint64 // the receive batch (see inflight.batches) in which out last rose from zero
	lastWrite uint64 // the write (see inflight.writes) that last took one of its packets
	writing   int    // TUN writes of its packets under way
	strikes   int    // write-offs, the last at struck
	struck    time.Time
	ungated   bool // struck twice within strikeWindow: no longer counted
}

// inflight is the receive gate.
type inflight struct {
	total   atomic.Int64 // the sum of active sessions' out
	waiting atomic.Int32
	writes  atomic.Uint64 // TUN writes that took counted packets, so far
	batches atomic.Uint64 // receive batches that held transport datagrams, so far
	wake    chan struct{} // one token; write sends it to a waiting loop

	drained, writtenOff atomic.Uint64 // waits that ended each way
	// stall is inflightStall; a test that must see a wait end drained
	// makes it longer.
	stall atomic.Int64

	mu        sync.Mutex
	cur, prev map[uint32]*session // two generations, see sessionRotation
	rotated   time.Time
	active    map[*session]struct{} // sessions with out > 0
}

func newInflight() *inflight {
	g := &inflight{wake: make(chan struct{}, 1), active: make(map[*session]struct{})}
	g.stall.Store(int64(inflightStall))
	return g
}

// sessionsMax bounds each generation: 16,384 indices, more than 10,000
// peers' handshakes in one rotation.
const sessionsMax = 1 << 14

// sessionRotation is how long a generation stays current: the first
// handshake devgate sends after it starts the next. An index is known for
// at least one rotation, and wireguard-go rejects a session's datagrams
// RejectAfterTime after its handshake.
const sessionRotation = device.RejectAfterTime

// note records the session indices of the handshake messages devgate sends
// among bufs: the sender index of an initiation or a response.
func (g *inflight) note(bufs [][]byte) {
	for _, b := range bufs {
		if !(len(b) == device.MessageInitiationSize && binary.LittleEndian.Uint32(b) == device.MessageInitiationType ||
			len(b) == device.MessageResponseSize && binary.LittleEndian.Uint32(b) == device.MessageResponseType) {
			continue
		}
		idx := binary.LittleEndian.Uint32(b[4:8])
		g.mu.Lock()
		if g.rotateLocked(time.Now()) {
			if g.cur == nil {
				g.cur = make(map[uint32]*session)
			}
			if g.cur[idx] == nil {
				g.cur[idx] = &session{}
			}
		}
		g.mu.Unlock()
	}
}

// rotateLocked starts a new generation when the current one is
// sessionRotation old; the counts of the sessions dropped with the oldest
// go too. It reports whether the current generation has room: a full one
// is not rotated early (that would drop live sessions), and indices beyond
// it go uncounted.
func (g *inflight) rotateLocked(now time.Time) bool {
	if now.Sub(g.rotated) < sessionRotation {
		return len(g.cur) < sessionsMax
	}
	for _, s := range g.prev {
		if s.out > 0 {
			g.total.Add(-s.out)
			delete(g.active, s)
		}
	}
	g.prev, g.cur, g.rotated = g.cur, nil, now
	return true
}

func (g *inflight) lookupLocked(idx uint32) *session {
	if s := g.cur[idx]; s != nil {
		return s
	}
	return g.prev[idx]
}

// countReceived counts the batch's transport data datagrams (not
// keepalives) of gated sessions.
func (g *inflight) countReceived(bufs [][]byte, sizes []int, n int) {
	locked := false
	var s *session
	var last uint32
	var c int64
	var batch uint64
	for i := range n {
		b := bufs[i][:sizes[i]]
		if !isTransportData(b) {
			continue
		}
		idx := binary.LittleEndian.Uint32(b[device.MessageTransportOffsetReceiver:])
		if !locked {
			g.mu.Lock()
			locked = true
			batch = g.batches.Add(1)
			s, last = g.lookupLocked(idx), idx
		} else if idx != last {
			s, last = g.lookupLocked(idx), idx
		}
		if s == nil || s.ungated {
			continue
		}
		if s.out == 0 {
			g.active[s] = struct{}{}
			s.since = batch
		}
		s.out++
		c++
	}
	if locked {
		g.total.Add(c)
		g.mu.Unlock()
	}
}

// write hands bufs to dev and takes its packets off their sessions'
// counts. offset is where each packet starts, after wireguard-go's
// transport header. The sessions are read before the write (a TUN may
// write into the bytes before offset) and marked as being written, which
// excuses them from a stall while the write lasts.
func (g *inflight) write(dev tun.Device, bufs [][]byte, offset int) (int, error) {
	if offset < device.MessageTransportOffsetContent {
		return dev.Write(bufs, offset)
	}
	// One peer's sequential receiver writes a batch: its packets belong to
	// at most its three sessions (previous, current, next).
	var runs [4]struct {
		s *session
		k int64
	}
	nr := 0
	var s *session
	var last uint32
	g.mu.Lock()
	for i, b := range bufs {
		idx := binary.LittleEndian.Uint32(b[offset-device.MessageTransportOffsetContent+device.MessageTransportOffsetReceiver:])
		if i == 0 || idx != last {
			s, last = g.lookupLocked(idx), idx
		}
		if s == nil {
			continue
		}
		j := 0
		for j < nr && runs[j].s != s {
			j++
		}
		if j == nr {
			if nr == len(runs) {
				continue
			}
			runs[nr].s, runs[nr].k = s, 0
			s.writing++
			nr++
		}
		runs[j].k++
	}
	g.mu.Unlock()

	n, err := dev.Write(bufs, offset)

	var done int64
	g.mu.Lock()
	seq := g.writes.Load() + 1
	for _, r := range runs[:nr] {
		r.s.writing--
		done += g.takeLocked(r.s, r.k, seq)
	}
	if done > 0 {
		g.writes.Store(seq)
	}
	g.mu.Unlock()
	if done > 0 && g.total.Add(-done) <= inflightLimit/2 && g.waiting.Load() > 0 {
		g.passWake()
	}
	return n, err
}

// takeLocked takes k written packets off s's count, never below zero (a
// session's packets counted before a write-off may still come), and
// returns how many it took.
func (g *inflight) takeLocked(s *session, k int64, seq uint64) int64 {
	if s == nil || s.out == 0 {
		return 0
	}
	k = min(k, s.out)
	s.out -= k
	s.lastWrite = seq
	if s.out == 0 {
		delete(g.active, s)
	}
	return k
}

// wait returns at once while at most inflightLimit datagrams are counted;
// otherwise once half of that is left, or once stalled has written counts
// off. timer is the calling loop's own, stopped. Resuming at half, not at
// the limit, lets a woken loop read a whole batch.
func (g *inflight) wait(timer *time.Timer, closing <-chan struct{}) {
	if g.total.Load() <= inflightLimit {
		return
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	stall := time.Duration(g.stall.Load())
	timer.Reset(stall)
	defer timer.Stop()
	// The write and receive-batch counters at the last two ticks (the
	// wait's start before there were any): sessions are judged on the two
	// windows since the older one.
	type mark struct{ writes, batches uint64 }
	start := mark{g.writes.Load(), g.batches.Load()}
	older, newer := start, start
	ticks := 0
	for {
		if g.total.Load() <= inflightLimit/2 {
			g.drained.Add(1)
			g.passWake()
			return
		}
		select {
		case <-g.wake:
		case <-timer.C:
			if g.total.Load() <= inflightLimit/2 {
				continue
			}
			ticks++
			if ticks >= 2 && g.stalled(older.writes, older.batches) {
				g.writtenOff.Add(1)
				g.passWake()
				return
			}
			older, newer = newer, mark{g.writes.Load(), g.batches.Load()}
			timer.Reset(stall)
		case <-closing:
			return
		}
	}
}

// passWake hands the token to another waiting loop, if any.
func (g *inflight) passWake() {
	if g.waiting.Load() > 0 {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
}

// stalled writes off the counts of the sessions with no packet written
// since the write numbered writes, none being written now, and counted
// since before the receive batch after batches: two windows of
// inflightStall, far longer than wireguard-go takes to open a few hundred
// datagrams, so it dropped theirs (or the process was off the CPU for that
// long). It reports whether it wrote any off. A session written off twice
// within strikeWindow is no longer counted; until then the wait goes on
// for the others, whose packets are on their way.
func (g *inflight) stalled(writes, batches uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	var off int64
	for s := range g.active {
		if s.lastWrite > writes || s.writing > 0 || s.since > batches {
			continue
		}
		off += s.out
		s.out = 0
		delete(g.active, s)
		if now.Sub(s.struck) > strikeWindow {
			s.strikes = 0
		}
		s.strikes++
		s.struck = now
		s.ungated = s.strikes >= 2
	}
	g.total.Add(-off)
	return off > 0
}

// GateStats counts how the receive gate's waits ended: Drained when the
// netstack caught up, WrittenOff when the gate stopped waiting for
// datagrams it could not see written.
type GateStats struct{ Drained, WrittenOff uint64 }

// ReceiveGate reports the receive gate's waits so far.
func (t *Tunnel) ReceiveGate() GateStats {
	return GateStats{Drained: t.inflight.drained.Load(), WrittenOff: t.inflight.writtenOff.Load()}
}

// isTransportData reports whether b is a WireGuard transport message
// carrying a packet (not a keepalive, which is empty).
func isTransportData(b []byte) bool {
	return len(b) > device.MessageKeepaliveSize && binary.LittleEndian.Uint32(b) == device.MessageTransportType
}

// stoppedTimer returns a timer that has not been started, for waits that
// Reset it.
func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}
