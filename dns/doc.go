// Package dns is devgate's private DNS server: the resolver a peer reaches at
// <prefix>::3 port 53 (UDP and TCP) inside its network.
//
// It answers the private names of the asker's network from a store.Snapshot
// (<app>.flycast, <app>.internal and friends, <peer>._peer.internal,
// _api.internal and the TXT listings Fly serves) and forwards every other
// name to the host's upstream resolvers, because a laptop that sets
// DNS = <prefix>::3 sends all its queries here. Private names are never
// forwarded: a name under .internal or .flycast that does not exist in the
// asker's network is NXDOMAIN, so one organization learns nothing about
// another's names.
//
// The asker's network is found from the query's source address
// (Config.NetworkFor); WireGuard's AllowedIPs make that address
// trustworthy. A query from an address in no network is REFUSED.
//
// The server takes listeners made elsewhere (Serve, ServePacket): the gVisor
// netstack's in production, 127.0.0.1 sockets in tests. UDP replies are
// written by one long-lived goroutine (replyQueue), not on the goroutine
// miekg/dns starts for each query.
//
// TTLs are short because state changes live (a machine starts or stops, an
// address is allocated): 5s for .internal, 60s for .flycast, whose addresses
// change only when allocated or released.
//
// Owns: the DNS wire protocol, private-name answers, forwarding. It reads
// snapshots and never the store itself. It must never import the API, the
// CLI, tunnel, netstack or flycast.
package dns
