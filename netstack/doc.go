// Package netstack owns the gateway's userspace IP stack: a gVisor stack with
// one NIC whose other side is a tun.Device that wireguard-go reads and
// writes. It filters what peers send (IPv6 only, same /48 only, echo only to
// addresses that exist), holds new TCP connections until a TCPHandler
// accepts or refuses them, and lets local services (the DNS server) listen on
// chosen addresses.
//
// It owns the gVisor stack, the link endpoint and the per-peer SYN budget.
// It knows nothing of apps, machines or the store: the Router interface in
// flow.go is the only thing it asks. It must never import the store, the
// API, the CLI, dns, flycast or tunnel.
package netstack
