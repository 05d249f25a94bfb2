package tunnel

import (
	"encoding/binary"
	"errors"
	"time"
)

// Replayed initiations. wireguard-go refuses an initiation whose sealed
// TAI64N timestamp is not after the last one it accepted from that peer,
// but it keeps that timestamp in the peer, and unloading an idle peer
// (lazy.go) discards it. Without more, an initiation captured on the wire
// and replayed after an unload would pass admit, load the peer and move its
// endpoint to the replayer's address until the peer's next handshake.
// Stock WireGuard has that exposure once, after a restart; unloading would
// renew it every idle period.
//
// So the tunnel keeps a floor per peer, in the peer's own clock: the
// initiation that loads a peer gives the peer's clock then (its sealed
// time) against ours, and at unload the floor moves to where the peer's
// clock stood replayMargin after its last handshake (no later than
// replayGuard ago). Every initiation the peer sent before the unload is
// below it; the next one it sends, at least unloadAfter later, is above.
// admit refuses an initiation at or below the floor.
//
// A peer loaded by an outbound packet (wake) is loaded before any
// initiation is seen, so until the peer's first initiation of that load
// wireguard-go's own check starts from zero, as after a restart.
const (
	// replayMargin covers the error of the estimate: the admitting
	// initiation's time in the checker's queue (at most checkQueue over
	// initiationChecks a second, 0.3 s), and the two clocks' drift since
	// then (NTP-disciplined clocks: well under a second a day).
	replayMargin = time.Minute
	// replayGuard keeps the floor behind the present, for an unload that
	// follows the last handshake at once (wg set remove): the peer's next
	// initiation must still pass.
	replayGuard = time.Second
)

// errReplayed is returned by load for an initiation sealed at or before
// the peer's floor.
var errReplayed = errors.New("initiation sealed before the peer's last handshake: replayed")

// tai64nBase is TAI64's label for the Unix epoch.
const tai64nBase = uint64(0x400000000000000a)

// tai64nTime decodes a TAI64N timestamp. Its seconds are clamped to what
// time.Time holds without overflow (a peer's clock, not trusted to be
// sane, can seal anything).
func tai64nTime(ts []byte) time.Time {
	const maxSecs = 1 << 40 // 34,000 years
	secs := binary.BigEndian.Uint64(ts[:8])
	switch {
	case secs < tai64nBase:
		secs = 0
	case secs-tai64nBase > maxSecs:
		secs = maxSecs
	default:
		secs -= tai64nBase
	}
	return time.Unix(int64(secs), int64(binary.BigEndian.Uint32(ts[8:12])%1e9))
}

// raiseFloorLocked moves e's floor past every initiation the peer sent
// during the load now ending, whose last handshake was last (our clock).
// t.mu is held.
func (e *lazyPeer) raiseFloorLocked(last, now time.Time) {
	if e.sealedAt.IsZero() {
		return // never loaded by an initiation: nothing to read its clock by
	}
	if last.Before(e.sealedAt) {
		last = e.sealedAt
	}
	end := last.Add(replayMargin)
	if g := now.Add(-replayGuard); g.Before(end) {
		end = g
	}
	f := e.sealed.Add(end.Sub(e.sealedAt))
	if f.Before(e.sealed) {
		f = e.sealed // the admitting initiation itself is spent
	}
	if f.After(e.floor) {
		e.floor = f
	}
}
