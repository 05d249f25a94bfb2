package tunnel

import "time"

// SweepAt runs the idle-peer sweep as if the clock read now.
func (t *Tunnel) SweepAt(now time.Time) error { return t.sweep(now) }
