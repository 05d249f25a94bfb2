package main

import (
	"os"
	"runtime/debug"
)

// Under load most of the gateway's heap is garbage a few milliseconds old:
// wireguard-go takes a 64 KiB buffer for each packet in flight. Go's default
// pacing (GOGC=100) lets the heap grow to twice what survived the last
// collection, and bench/run saw a peak RSS of 199-224 MiB. Collecting at
// half that growth (GOGC=50) kept the peak at 133-138 MiB with throughput
// and CPU within the host's noise. A fixed soft limit (GOMEMLIMIT=100MiB)
// did better on the benchmark, 109 MiB, but turns into back-to-back
// collections once the live set outgrows it (10,000 idle connections alone
// are 250 MB), so it is left to operators who know their load.

// setGCPercent applies serve's --gc-percent unless the operator set GOGC
// (which the runtime has applied already) or asked for Go's default (0).
func setGCPercent(percent int) {
	if percent == 0 || os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(percent)
}
