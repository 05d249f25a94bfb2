// Package tunnel owns the gateway's WireGuard device: a userspace
// wireguard-go device on a UDP port, its private key file, its live peer set
// and its UAPI socket (so `wg show` and wgctrl can read it). Packets it
// decrypts go to a tun.Device it is given (the netstack's).
//
// It knows peers only as public keys and allowed IPs; it must never import
// the store, the API, the CLI or netstack.
package tunnel
