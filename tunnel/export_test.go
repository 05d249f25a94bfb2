package tunnel

import (
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// NewWithBind is New with wrap around the UDP bind.
func NewWithBind(cfg Config, wrap func(conn.Bind) conn.Bind) (*Tunnel, error) {
	return newTunnel(cfg, wrap)
}

// SendGateWaiting reports whether the TUN reader waits at the send gate.
func (t *Tunnel) SendGateWaiting() bool { return t.sendGate.waiting.Load() }

// SweepAt runs the idle-peer sweep as if the clock read now.
func (t *Tunnel) SweepAt(now time.Time) error { return t.sweep(now) }

// GateCount is the receive gate's count of datagrams inside wireguard-go.
func (t *Tunnel) GateCount() int64 { return t.inflight.total.Load() }

// GateWaiting reports whether a receive loop waits at the gate.
func (t *Tunnel) GateWaiting() bool { return t.inflight.waiting.Load() > 0 }

// SetReceiveGateStall sets the receive gate's stall window (inflightStall),
// so a test that must see a wait end drained is not written off while it
// is off the CPU; 0 restores inflightStall.
func (t *Tunnel) SetReceiveGateStall(d time.Duration) {
	if d == 0 {
		d = inflightStall
	}
	t.inflight.stall.Store(int64(d))
}

// GateSessions lists the session indices the receive gate knows.
func (t *Tunnel) GateSessions() []uint32 {
	t.inflight.mu.Lock()
	defer t.inflight.mu.Unlock()
	var out []uint32
	for _, gen := range []map[uint32]*session{t.inflight.cur, t.inflight.prev} {
		for idx := range gen {
			out = append(out, idx)
		}
	}
	return out
}

// LatestSealed is the latest sealed time the checker opened in an
// initiation from the configured peer k (replay.go).
func (t *Tunnel) LatestSealed(k wgtypes.Key) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.table.Load().byKey[k]; e != nil {
		return e.sealed
	}
	return time.Time{}
}

// SendGateCount is the send gate's count of packets inside wireguard-go.
func (t *Tunnel) SendGateCount() int64 { return t.sendGate.inside.Load() }

// SetSendGateLimit lowers the send gate's limit (sendLimit), so a test
// need not fill wireguard-go with 512 packets.
func (t *Tunnel) SetSendGateLimit(n int64) { t.sendGate.limit.Store(n) }
