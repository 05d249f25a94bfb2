# Convenience targets. The tests need only `go test ./...` (see README).

.PHONY: bench gobench

# The side-by-side data-plane benchmark: devgate, wireguard-go TUN to TUN and
# loopback in network namespaces. Needs root, iperf3, wrk, curl, jq,
# wireguard-tools. Not run in CI. Knobs: see the top of bench/run.
bench:
	bench/run

# The Go benchmarks of the hot paths and the scale figures.
gobench:
	go test -run '^$$' -benchmem -bench . ./netstack/ ./dns/ ./flycast/
	go test -run '^$$' -benchmem -bench 'TCP|IdlePeers' -benchtime 1x ./tunnel/
