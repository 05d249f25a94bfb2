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

	mu      sync.Mutex // held while a line is written, so stop waits for it
	last    map[string]time.Time
	muted   map[string]int
	stopped bool
}

// newRateLimiter wraps logf for wireguard-go (see logger): each format
// string is logged at most once per logInterval, with a count of what was
// suppressed.
func newRateLimiter(logf func(string, ...any)) *rateLimiter {
	return &rateLimiter{logf: logf, now: time.Now, last: make(map[string]time.Time), muted: make(map[string]int)}
}

func (r *rateLimiter) logger() *device.Logger {
	return &device.Logger{Verbosef: r.logfFor("wireguard: "), Errorf: r.logfFor("wireguard error: ")}
}

// stop drops every later line. wireguard-go's Close does not wait for its
// encryption and decryption workers, which log as they exit; after stop
// returns none of them writes to logf (a test's t.Logf panics once its
// test has ended).
func (r *rateLimiter) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func (r *rateLimiter) logfFor(prefix string) func(string, ...any) {
	return func(format string, args ...any) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if n, ok := r.allowLocked(format); ok {
			if n > 0 {
				r.logf(prefix+format+" (and %d more like it)", append(args, n)...)
				return
			}
			r.logf(prefix+format, args...)
		}
	}
}

// allowLocked reports whether format may be logged now and how many lines
// of it were suppressed since the last one. r.mu is held.
func (r *rateLimiter) allowLocked(format string) (int, bool) {
	if r.stopped {
		return 0, false
	}
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
