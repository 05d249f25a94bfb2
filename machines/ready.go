package machines

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

const (
	// readyFirstDelay and readyMaxDelay shape WaitReady's retries: a
	// waking machine usually listens within milliseconds, and a client is
	// waiting on its first connection, so the poll never slows to seconds.
	readyFirstDelay = time.Millisecond
	readyMaxDelay   = 25 * time.Millisecond
)

// WaitReady returns once a TCP connection to addr succeeds, retrying with
// a delay that starts at 1 ms and doubles to 25 ms. It returns ctx's error,
// naming addr, when ctx ends first.
func WaitReady(ctx context.Context, addr netip.AddrPort) error {
	var dialer net.Dialer
	delay := readyFirstDelay
	var timer *time.Timer
	for {
		c, err := dialer.DialContext(ctx, "tcp", addr.String())
		if err == nil {
			// The probe has done its job; how it closes says nothing
			// about readiness.
			c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for %s to listen: %w (last error: %v)", addr, ctx.Err(), err)
		}
		if timer == nil {
			timer = time.NewTimer(delay)
			defer timer.Stop()
		} else {
			timer.Reset(delay)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to listen: %w", addr, ctx.Err())
		}
		delay = min(2*delay, readyMaxDelay)
	}
}
