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
// So the tunnel keeps a floor per peer, in the peer's own clock. The
// checker opens the sealed time of every initiation from a configured peer
// (loaded or not), so the latest one gives the peer's clock against ours.
// At unload the floor moves past that time, and past where the peer's
// clock stood replayMargin after its last handshake (no later than
// replayGuard ago). Every initiation the peer sent before the unload is
// below it: those the checker saw by their own time, the rest because they
// were sealed before the last handshake, or, when a handshake never
// completed, within the margin of it. The next one the peer sends, after
// the unload (an idle unload comes unloadAfter after the last handshake),
// is above. admit refuses an initiation at or below the floor.
//
// The floor holds for loaded peers too, such as one loaded by an outbound
// packet (wake) or set by hand through the UAPI socket: every initiation
// the checker has room for is checked before wireguard-go sees it. What
// it does not cover: a replay the checker had no room for
// (initiationChecks), which reaches wireguard-go unchecked; for a peer
// whose load wireguard-go has no record from yet, that one is taken.
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
// time.Time holds without overflow and its nanoseconds below a second (a
// peer's clock, not trusted to be sane, can seal anything), which keeps
// the order of the raw bytes wireguard-go compares.
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
	return time.Unix(int64(secs), int64(min(binary.BigEndian.Uint32(ts[8:12]), 999_999_999)))
}

// noteSealedLocked keeps the latest sealed time the checker opened for e,
// with our clock at that moment. t.mu is held.
func (e *lazyPeer) noteSealedLocked(sealed, now time.Time) {
	if sealed.After(e.sealed) {
		e.sealed, e.sealedAt = sealed, now
	}
}

// raiseFloorLocked moves e's floor past every initiation the peer sent
// during the load now ending, whose last handshake was last (our wall
// clock; zero if none). The time since the peer's latest sealed time is
// measured on our monotonic clock and the idle time since the handshake
// on our wall clock (wireguard-go reports it so), so a step of our wall
// clock moves the floor by no more than the idle time. t.mu is held.
func (e *lazyPeer) raiseFloorLocked(last, now time.Time) {
	if e.sealedAt.IsZero() {
		return // no initiation checked: nothing to read its clock by
	}
	since := now.Sub(e.sealedAt)
	idle := since // no handshake since that initiation
	if !last.IsZero() {
		idle = min(max(now.Round(0).Sub(last), 0), since)
	}
	// The peer's clock at the last handshake plus the margin, no later
	// than replayGuard ago, and never before the latest sealed time.
	f := e.sealed.Add(max(min(since-idle+replayMargin, since-replayGuard), 0))
	if f.After(e.floor) {
		e.floor = f
	}
}
