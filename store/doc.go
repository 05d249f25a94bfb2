// Package store is devgate's state: organizations, networks, peers, apps,
// Flycast addresses and machines, kept in a NATS JetStream key-value bucket.
//
// It owns the bucket, its key layout and every allocation made in it
// (network numbers, peer, Flycast and machine addresses). Uniqueness rests on
// the bucket alone: records are written with create-if-absent or with a
// revision check, so several gateways sharing one NATS cluster can never hand
// out the same name or address. Readers on the data plane never call the
// store; they hold a *Snapshot that Watch rebuilds on every change.
//
// It can also run the NATS server itself (StartEmbedded) with file storage
// synced on every write, so an acknowledged write survives kill -9.
//
// The store must never import the API, the CLI or any data-plane package
// (tunnel, netstack, dns, flycast); only the pure addressing package peers.
package store
