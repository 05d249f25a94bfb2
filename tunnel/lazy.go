package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Lazy peers. wireguard-go spends about 25 KB on every peer it holds (two
// 1,024-slot queues, goroutines, timers), so a gateway sized for 10,000
// laptops would hold 250 MB for peers that are mostly asleep. The tunnel
// keeps every configured peer in a compact table instead and gives
// wireguard-go only the peers in use:
//
//   - A handshake initiation from a peer that is not loaded loads it. The
//     receive path queues every initiation with a valid MAC1, as far as
//     room and rate allow (see below), for a checker goroutine, which does
//     the first half of the responder's Noise IK work to learn the
//     initiator's static key and proves the sender holds that key's
//     private half by opening the sealed timestamp. If that peer is
//     configured but not loaded, the checker loads it. The receive path
//     never waits on a Diffie-Hellman or on wireguard-go's configuration
//     lock.
//   - Every initiation the checker has room for is withheld from
//     wireguard-go, and the checker hands it back to the receive path,
//     which gives it to wireguard-go as if it had just arrived, unless it
//     is a replay (replay.go) or a copy of one already handed back. Only
//     those the checker has no room for (see initiationChecks) go to
//     wireguard-go at once, unchecked. Handing back a copy while
//     wireguard-go also had the original made one initiation arrive twice
//     whenever wireguard-go took the original after the checker's load;
//     two handshake workers then answered it together, and wireguard-go
//     kept the session of one answer while the laptop took the other, so
//     nothing passed until the laptop gave up on its session 15 s later
//     (seen under load in tests). Still possible, as with stock WireGuard:
//     two copies the network delivers of a hand-configured peer's
//     initiation (the checker has no record of such a peer), or of one
//     whose other copy found the checker full, reach wireguard-go both. A
//     loaded peer's rekey waits for the checker (two X25519, and the
//     tunnel's lock, which a sweep or SetPeers holds while it reconfigures
//     the device); its current session carries traffic meanwhile. An
//     earlier version let initiations from the address of a loaded peer
//     straight through, so that its rekeying skipped the checker (well
//     under a millisecond); a second laptop behind the same NAT port then
//     lost its first handshake, because wireguard-go dropped it (the peer
//     was not loaded yet) and the checker, which loaded the peer, could
//     not know that.
//   - A packet the netstack sends to a peer that is not loaded (a reply on
//     a connection that outlived the session) loads it with its last
//     endpoint, so wireguard-go can start a handshake when TCP retransmits.
//   - A peer with no handshake (nor checked initiation) for unloadAfter is
//     unloaded; its counters and last handshake are kept in the table, so
//     Stats stays monotonic.
//
// Tailscale trims idle peers from its wireguard-go configuration for the
// same reason.

const (
	// unloadAfter is how long a loaded peer may go without a handshake.
	// WireGuard rejects keys older than 180 s, so by then the peer must
	// handshake again before it can send, and that handshake reloads it.
	unloadAfter = 5 * time.Minute
	// sweepEvery is how often loaded peers are checked for idleness.
	sweepEvery = 30 * time.Second
	// initiationChecks bounds the initiations per second whose sender is
	// identified: one X25519 operation each, two for a configured peer
	// (0.15 ms each on the project's Xeon), so a flood of initiations from
	// anyone who knows the gateway's public key costs the checker at most
	// 6 % of a core. 200 a second is the rekeying of 24,000 active peers.
	// Initiations over the limit, or beyond checkQueue waiting, are not
	// checked and not withheld: wireguard-go has them alone, as if the
	// tunnel were not there (so under a flood it answers with cookies as
	// usual), and drops those from peers that are not loaded; such a peer
	// retries (every 5 s, as WireGuard clients do).
	initiationChecks = 200
	initiationBurst  = 50
	checkQueue       = 64
	// injectQueue bounds checked initiations waiting to re-enter the
	// receive path.
	injectQueue = 16
)

// heldInitiation is a copy of an initiation and where it came from.
type heldInitiation struct {
	msg [device.MessageInitiationSize]byte
	ep  conn.Endpoint
}

// lazyPeer is one configured peer. key is fixed; allowed and saved are
// guarded by Tunnel.mu; loaded is written under Tunnel.mu and read without
// it by the packet paths.
type lazyPeer struct {
	key     wgtypes.Key
	allowed []netip.Prefix // sorted

	loaded  atomic.Bool
	loading atomic.Bool // a load is in flight
	// reachable is set once saved holds an endpoint, so an outbound
	// packet can load the peer.
	reachable atomic.Bool
	// saved holds what the device reported when the peer was last
	// unloaded: counters accumulate across loads.
	saved    PeerStats
	loadedAt time.Time
	// sealed is the latest time sealed in an initiation from the peer
	// that the checker opened (the peer's clock) and sealedAt ours when
	// it did; floor is the peer's time at or before which initiations
	// are refused as replays (replay.go); handedBack is the sealed time
	// of the latest initiation handed back to wireguard-go.
	sealed, sealedAt, floor, handedBack time.Time
}

// peerTable is an immutable snapshot of the configured peers, swapped
// whole by SetPeers so the packet paths read it without locks. byPrefix
// and lens are derived from byKey by index.
type peerTable struct {
	byKey    map[wgtypes.Key]*lazyPeer
	byPrefix map[netip.Prefix]*lazyPeer // IPv6 allowed IPs only
	lens     []int                      // distinct prefix lengths in byPrefix
}

func newPeerTable(n int) *peerTable {
	return &peerTable{byKey: make(map[wgtypes.Key]*lazyPeer, n), byPrefix: make(map[netip.Prefix]*lazyPeer, n)}
}

// index builds byPrefix and lens from byKey's peers.
func (pt *peerTable) index() {
	for _, e := range pt.byKey {
		for _, p := range e.allowed {
			if p.Addr().Is6() {
				pt.byPrefix[p] = e
				if !slices.Contains(pt.lens, p.Bits()) {
					pt.lens = append(pt.lens, p.Bits())
				}
			}
		}
	}
}

// owner returns the peer whose allowed IPs hold dst, trying the longest
// prefix first as WireGuard's routing does.
func (pt *peerTable) owner(dst netip.Addr) *lazyPeer {
	var best *lazyPeer
	bestBits := -1
	for _, l := range pt.lens {
		if l <= bestBits {
			continue
		}
		p, err := dst.Prefix(l)
		if err != nil {
			continue
		}
		if e := pt.byPrefix[p]; e != nil {
			best, bestBits = e, l
		}
	}
	return best
}

// responder identifies the senders of handshake initiations addressed to
// the gateway's key.
type responder struct {
	priv, pub [32]byte
	mac1      device.CookieChecker
	limit     *rate.Limiter
}

func newResponder(priv wgtypes.Key) *responder {
	r := &responder{priv: priv, pub: priv.PublicKey(), limit: rate.NewLimiter(initiationChecks, initiationBurst)}
	r.mac1.Init(device.NoisePublicKey(r.pub))
	return r
}

// wants reports whether msg is a handshake initiation with a valid MAC1:
// one sealed for this gateway's key by someone who knows that key.
func (r *responder) wants(msg []byte) bool {
	return len(msg) == device.MessageInitiationSize && binary.LittleEndian.Uint32(msg) == device.MessageInitiationType && r.mac1.CheckMAC1(msg)
}

func mixHash(dst, h *[blake2s.Size]byte, data []byte) {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	d.Sum(dst[:0])
}

// Offsets in a handshake initiation (WireGuard whitepaper, section 5.4.2).
const (
	initEphemeral = 8
	initStatic    = initEphemeral + 32
	initTimestamp = initStatic + 32 + chacha20poly1305.Overhead
	initMAC1      = initTimestamp + 12 + chacha20poly1305.Overhead
)

// initiator returns the static key an initiation claims and the Noise
// state after it, following the responder's steps in wireguard-go's
// ConsumeMessageInitiation. msg has passed MAC1.
func (r *responder) initiator(msg []byte) (pk wgtypes.Key, hash, chainKey [blake2s.Size]byte, ok bool) {
	eph := msg[initEphemeral:initStatic]
	mixHash(&hash, &device.InitialHash, r.pub[:])
	mixHash(&hash, &hash, eph)
	device.KDF1(&chainKey, device.InitialChainKey[:], eph)
	ss, err := curve25519.X25519(r.priv[:], eph)
	if err != nil {
		return pk, hash, chainKey, false // a low-order point
	}
	var key [chacha20poly1305.KeySize]byte
	device.KDF2(&chainKey, &key, chainKey[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	var nonce [chacha20poly1305.NonceSize]byte
	if _, err := aead.Open(pk[:0], nonce[:], msg[initStatic:initTimestamp], hash[:]); err != nil {
		return pk, hash, chainKey, false
	}
	mixHash(&hash, &hash, msg[initStatic:initTimestamp])
	return pk, hash, chainKey, true
}

// sealedTime opens the initiation's TAI64N timestamp, which is sealed with
// the static-static secret: only the holder of pk's private key (or the
// gateway) can compute it, so ok proves the sender holds that key.
func (r *responder) sealedTime(msg []byte, pk wgtypes.Key, hash, chainKey [blake2s.Size]byte) (sealed time.Time, ok bool) {
	ss, err := curve25519.X25519(r.priv[:], pk[:])
	if err != nil {
		return sealed, false
	}
	var key [chacha20poly1305.KeySize]byte
	device.KDF2(&chainKey, &key, chainKey[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	var nonce [chacha20poly1305.NonceSize]byte
	var ts [12]byte
	if _, err = aead.Open(ts[:0], nonce[:], msg[initTimestamp:initMAC1], hash[:]); err != nil {
		return sealed, false
	}
	return tai64nTime(ts[:]), true
}

// checkLoop checks queued initiations until Close.
func (t *Tunnel) checkLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.closing:
			return
		case h := <-t.checks:
			if !t.check(&h) || h.ep == nil {
				continue
			}
			// It is marked handed back, so it must not be dropped here: a
			// full queue waits for the receive routines the wakes of those
			// before it have woken. Meanwhile checks fills, and what the
			// receive path cannot queue goes to wireguard-go directly.
			select {
			case t.inject <- h:
				t.handedBack.Add(1)
				t.wakeReceive()
			case <-t.closing:
				return
			}
		}
	}
}

// check decides what becomes of an initiation the receive path withheld:
// it reports whether to hand it back to wireguard-go. admit must pass it,
// and for a configured peer it must be later than the last one handed
// back (a copy, or an older one, is not); an initiation from a sender
// that is not a configured peer (none, or one set by hand through the
// UAPI socket) is left to wireguard-go.
func (t *Tunnel) check(h *heldInitiation) bool {
	e, sealed, ok := t.admit(h.msg[:])
	switch {
	case !ok:
		return false
	case e == nil:
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !sealed.After(e.handedBack) {
		return false
	}
	e.handedBack = sealed
	return true
}

// admit identifies the sender of an initiation (which has passed MAC1).
// If it is a configured peer, admit proves the sender holds its key,
// refuses the initiation if it was sealed at or before the peer's replay
// floor, and loads the peer if it is not loaded. It returns that peer (nil
// for any other sender) and the sealed time; ok is false if the
// initiation is refused.
func (t *Tunnel) admit(msg []byte) (e *lazyPeer, sealed time.Time, ok bool) {
	r := t.responder
	if !r.wants(msg) {
		return nil, sealed, false
	}
	pk, hash, chainKey, ok := r.initiator(msg)
	if !ok {
		return nil, sealed, false
	}
	if e = t.table.Load().byKey[pk]; e == nil {
		return nil, sealed, true
	}
	if sealed, ok = r.sealedTime(msg, pk, hash, chainKey); !ok {
		return nil, sealed, false
	}
	switch err := t.load(e, sealed); {
	case errors.Is(err, errReplayed):
		t.replays.Add(1) // counted, not logged: anyone who captured one can send it
		return e, sealed, false
	case err != nil:
		t.logf("wireguard: load peer %s: %v", e.key, err)
		return e, sealed, false
	}
	return e, sealed, true
}

// wakeReceive sends the gateway's own UDP port a datagram too short to be
// a WireGuard message, so a receive routine blocked in its read returns
// and picks up the initiations waiting in t.inject.
func (t *Tunnel) wakeReceive() {
	if t.waker != nil {
		t.waker.Write([]byte{0})
	}
}

// load gives e to the device. An initiation loads a peer with the time it
// was sealed at, which must be after the peer's replay floor (also when
// the peer is loaded already), and sets the endpoint itself; an outbound
// packet loads it with the zero time, and the peer's last known endpoint
// for wireguard-go's handshake.
func (t *Tunnel) load(e *lazyPeer, sealed time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.table.Load().byKey[e.key] != e {
		return nil // removed or replaced meanwhile
	}
	byInitiation := !sealed.IsZero()
	if byInitiation {
		if !sealed.After(e.floor) {
			return errReplayed
		}
		// Its time goes into the floor the next unload sets, also when
		// the peer is loaded already, in case its handshake never
		// completes.
		e.noteSealedLocked(sealed, time.Now())
	}
	if e.loaded.Load() {
		return nil
	}
	b := appendPeerLines(nil, e.key, e.allowed)
	if !byInitiation && e.saved.Endpoint.IsValid() {
		b = fmt.Appendf(b, "endpoint=%s\n", e.saved.Endpoint)
	}
	if err := t.dev.IpcSetOperation(bytes.NewReader(b)); err != nil {
		return err
	}
	t.markLoadedLocked(e, time.Now())
	return nil
}

// markLoadedLocked records that the device now holds e. t.mu is held.
func (t *Tunnel) markLoadedLocked(e *lazyPeer, now time.Time) {
	e.loadedAt = now
	e.loaded.Store(true)
	t.loads.Add(1)
}

// markUnloadedLocked records that the device no longer holds e, whose
// figures there were live: they are added to those of earlier loads, its
// endpoint lets an outbound packet load it again, and its replay floor
// passes its last handshake. t.mu is held.
func (t *Tunnel) markUnloadedLocked(e *lazyPeer, live PeerStats) {
	e.saved = mergeStats(e.saved, live)
	e.raiseFloorLocked(e.saved.LastHandshake, time.Now())
	e.reachable.Store(e.saved.Endpoint.IsValid())
	e.loaded.Store(false)
	t.unloads.Add(1)
}

// appendPeerLines appends the UAPI lines that create or update a peer
// with exactly the allowed IPs a.
func appendPeerLines(b []byte, k wgtypes.Key, a []netip.Prefix) []byte {
	b = appendKeyLine(b, k)
	b = append(b, "replace_allowed_ips=true\n"...)
	return appendAllowedIPs(b, a)
}

// appendAllowedIPs appends one UAPI allowed_ip line per prefix.
func appendAllowedIPs(b []byte, a []netip.Prefix) []byte {
	for _, p := range a {
		b = append(b, "allowed_ip="...)
		b = p.AppendTo(b)
		b = append(b, '\n')
	}
	return b
}

// sweepLoop unloads idle peers until Close.
func (t *Tunnel) sweepLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	for {
		select {
		case <-t.closing:
			return
		case now := <-tick.C:
			if err := t.sweep(now); err != nil {
				t.logf("wireguard: unload idle peers: %v", err)
			}
		}
	}
}

// sweep unloads every loaded peer whose last handshake, load and latest
// checked initiation are all older than unloadAfter at now. The
// initiation counts because wireguard-go notes a handshake only when the
// first data packet after it arrives: a peer swept between its
// initiation's hand-back and that packet lost the session it had just
// made, and its laptop stalled until it gave up on it. Only a newer
// sealed time moves sealedAt, so replays cannot keep a peer loaded.
func (t *Tunnel) sweep(now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	live, err := t.deviceStats()
	if err != nil {
		return err
	}
	tab := t.table.Load()
	var b []byte
	type unload struct {
		e    *lazyPeer
		live PeerStats
	}
	var gone []unload
	for _, s := range live {
		e := tab.byKey[s.PublicKey]
		if e == nil || !e.loaded.Load() {
			continue // not ours (set through the UAPI socket)
		}
		last := e.loadedAt
		for _, at := range []time.Time{s.LastHandshake, e.sealedAt} {
			if at.After(last) {
				last = at
			}
		}
		if now.Sub(last) < unloadAfter {
			continue
		}
		b = appendKeyLine(b, e.key)
		b = append(b, "remove=true\n"...)
		gone = append(gone, unload{e, s})
	}
	if len(gone) == 0 {
		return nil
	}
	if err := t.dev.IpcSetOperation(bytes.NewReader(b)); err != nil {
		return err
	}
	for _, u := range gone {
		t.markUnloadedLocked(u.e, u.live)
	}
	return nil
}

// mergeStats adds a loaded peer's live figures to those kept from its
// earlier loads.
func mergeStats(saved, live PeerStats) PeerStats {
	saved.RxBytes += live.RxBytes
	saved.TxBytes += live.TxBytes
	if live.LastHandshake.After(saved.LastHandshake) {
		saved.LastHandshake = live.LastHandshake
	}
	if live.Endpoint.IsValid() {
		saved.Endpoint = live.Endpoint
	}
	return saved
}

// lazyBind withholds received initiations from wireguard-go and queues
// them for the checker, as far as its queue and rate allow, and returns
// the ones the checker hands back with the packets of a later read.
type lazyBind struct {
	conn.Bind
	t *Tunnel
}

func (b lazyBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	t := b.t
	for i, recv := range fns {
		timer := stoppedTimer()
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			// Initiations handed back go first, without a read, so they
			// also pass through binds that read one datagram at a time.
			if n := t.takeInjected(bufs, sizes, eps, 0); n > 0 {
				return n, nil
			}
			t.inflight.wait(timer, t.closing)
			n, err := recv(bufs, sizes, eps)
			if err != nil {
				return n, err
			}
			t.inflight.countReceived(bufs, sizes, n)
			for j := range n {
				msg := bufs[j][:sizes[j]]
				if !t.responder.wants(msg) || len(t.checks) == cap(t.checks) || !t.responder.limit.Allow() {
					continue // no room or over the rate: wireguard-go alone has it
				}
				h := heldInitiation{ep: eps[j]}
				copy(h.msg[:], msg)
				select {
				case t.checks <- h:
					sizes[j] = 0 // withheld: wireguard-go skips it
				default: // the checker is behind: wireguard-go alone has it
				}
			}
			return t.takeInjected(bufs, sizes, eps, n), nil
		}
	}
	return fns, actual, err
}

// Send notes the session indices of the handshakes devgate sends, for the
// receive gate (inflight.go), and counts what it sent for the send gate
// (sendgate.go).
func (b lazyBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.t.inflight.note(bufs)
	err := b.Bind.Send(bufs, ep)
	data := 0
	for _, m := range bufs {
		if isTransportData(m) {
			data++
		}
	}
	b.t.sendGate.sent(data)
	return err
}

// takeInjected fills the batch from slot n on with initiations the checker
// handed back and returns the new count.
func (t *Tunnel) takeInjected(bufs [][]byte, sizes []int, eps []conn.Endpoint, n int) int {
	for ; n < len(bufs); n++ {
		select {
		case h := <-t.inject:
			sizes[n] = copy(bufs[n], h.msg[:])
			eps[n] = h.ep
		default:
			return n
		}
	}
	return n
}

// lazyTUN watches the packets the netstack hands wireguard-go for ones
// addressed to a peer that is not loaded, and loads that peer. wireguard-go
// drops the packet itself (it has no peer for it yet); the retransmission
// finds the peer and starts a handshake.
type lazyTUN struct {
	tun.Device
	t *Tunnel

	// The last destination seen, so a stream of packets to one peer costs
	// a compare and an atomic load each. Read is called by one goroutine
	// (wireguard-go's RoutineReadFromTUN).
	lastTab *peerTable
	lastDst [16]byte
	lastOwn *lazyPeer
	timer   *time.Timer // the send gate's, made with the device
}

// Write hands wireguard-go's decrypted packets to the netstack through the
// receive gate (inflight.go), which takes them off its counts.
func (d *lazyTUN) Write(bufs [][]byte, offset int) (int, error) {
	return d.t.inflight.write(d.Device, bufs, offset)
}

// Read hands wireguard-go the netstack's packets through the send gate
// (sendgate.go).
func (d *lazyTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.t.sendGate.wait(d.timer, d.t.closing)
	n, err := d.Device.Read(bufs, sizes, offset)
	tab := d.t.table.Load()
	toLoaded := 0
	for i := range n {
		pkt := bufs[i][offset : offset+sizes[i]]
		if len(pkt) < 40 || pkt[0]>>4 != 6 {
			continue
		}
		dst := [16]byte(pkt[24:40])
		if tab != d.lastTab || dst != d.lastDst {
			d.lastTab, d.lastDst, d.lastOwn = tab, dst, tab.owner(netip.AddrFrom16(dst))
		}
		switch e := d.lastOwn; {
		case e == nil: // no peer: wireguard-go drops it
		case e.loaded.Load():
			toLoaded++
		default: // wireguard-go drops it, and loads the peer for the next
			d.t.wake(e)
		}
	}
	d.t.sendGate.read(toLoaded)
	return n, err
}

// wake loads e in the background for an outbound packet, if wireguard-go
// would have somewhere to send it: a peer that never connected has no
// endpoint to send a handshake to.
func (t *Tunnel) wake(e *lazyPeer) {
	if !e.reachable.Load() || !e.loading.CompareAndSwap(false, true) {
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer e.loading.Store(false)
		if err := t.load(e, time.Time{}); err != nil {
			t.logf("wireguard: load peer %s: %v", e.key, err)
		}
	}()
}
