package tunnel

import (
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// logInterval is the least time between two log lines of the same kind.
// wireguard-go logs per packet and per handshake attempt; a scanner or a
// laptop with a stale key would otherwise flood the log.
const logInterval = 10 * time.Second

// maxLogKinds bounds the rate limiter's memory. Kinds are wireguard-go's
// format strings, a small fixed set; the bound is a guard.
const maxLogKinds = 256

type rateLimiter struct {
	logf func(string, ...any)
	now  func() time.Time

	mu    sync.Mutex
	last  map[string]time.Time
	muted map[string]int
}

// newRateLimitedLogger wraps logf for wireguard-go: each format string is
// logged at most once per logInterval, with a count of what was suppressed.
func newRateLimitedLogger(logf func(string, ...any)) *device.Logger {
	r := &rateLimiter{logf: logf, now: time.Now, last: make(map[string]time.Time), muted: make(map[string]int)}
	return &device.Logger{Verbosef: r.logfFor("wireguard: "), Errorf: r.logfFor("wireguard error: ")}
}

func (r *rateLimiter) logfFor(prefix string) func(string, ...any) {
	return func(format string, args ...any) {
		if n, ok := r.allow(format); ok {
			if n > 0 {
				r.logf(prefix+format+" (and %d more like it)", append(args, n)...)
				return
			}
			r.logf(prefix+format, args...)
		}
	}
}

// allow reports whether format may be logged now and how many lines of it
// were suppressed since the last one.
func (r *rateLimiter) allow(format string) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if t, ok := r.last[format]; ok && now.Sub(t) < logInterval {
		r.muted[format]++
		return 0, false
	}
	if len(r.last) >= maxLogKinds {
		clear(r.last)
		clear(r.muted)
	}
	n := r.muted[format]
	delete(r.muted, format)
	r.last[format] = now
	return n, true
}
