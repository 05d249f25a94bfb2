package main

import (
	"runtime/debug"
	"testing"
)

// TestSetGCPercent checks serve's collector setting against the runtime:
// it applies a percent, and leaves GOGC's or Go's default alone.
func TestSetGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	current := func() int {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	setGCPercent(0)
	if got := current(); got != 100 {
		t.Errorf("--gc-percent 0 set %d, want Go's default left (100)", got)
	}
	t.Setenv("GOGC", "200")
	setGCPercent(50)
	if got := current(); got != 100 {
		t.Errorf("with GOGC set, --gc-percent changed the setting to %d", got)
	}
	t.Setenv("GOGC", "")
	setGCPercent(50)
	if got := current(); got != 50 {
		t.Errorf("--gc-percent 50 set %d", got)
	}
}
