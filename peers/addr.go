// Package peers owns 6PN addressing and WireGuard peer configuration files.
//
// Addressing follows Fly's 6PN layout. Every (organization, network) owns a
// /48, fdaa:X:Y::/48, numbered once and never reused. Within it:
//
//	<prefix>::3                          the resolver (DNS, ping, _api.internal)
//	<prefix>:0:1::<n>                    Flycast addresses
//	<prefix>:a7b:<gw>:<k>:a:<l>02/120    peers (laptops) behind gateway gw
//	<prefix>:a7b:b<gw>:<m>:<m>:2         machines' virtual 6PN addresses
//
// This package is pure: it computes addresses and reads and writes wg-quick
// files. It must never import the store, the API or the CLI.
package peers

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// MaxNetworkNumber is the largest network number: X and Y are 16 bits each.
const MaxNetworkNumber = 1<<32 - 1

// MaxPeerNumber is the largest peer number per gateway per network: k (8
// bits above the /120) and l (8 bits) give 2^16-1 peers.
const MaxPeerNumber = 1<<16 - 1

// MaxGateway is the largest gateway number; machine host groups are 0xb000|gw.
const MaxGateway = 0xfff

// PeerPrefixLen is the length of the prefix the gateway routes to each peer.
const PeerPrefixLen = 120

// NetworkPrefix returns the /48 of network number n (n >= 1).
func NetworkPrefix(n uint32) netip.Prefix {
	var a [16]byte
	a[0], a[1] = 0xfd, 0xaa
	binary.BigEndian.PutUint32(a[2:6], n)
	return netip.PrefixFrom(netip.AddrFrom16(a), 48)
}

// Resolver returns <prefix>::3, the network's DNS server address.
func Resolver(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As16()
	a[15] = 3
	return netip.AddrFrom16(a)
}

// Flycast returns the n-th Flycast address of a network: <prefix>:0:1::<n>.
func Flycast(p netip.Prefix, n uint32) netip.Addr {
	a := p.Masked().Addr().As16()
	a[9] = 1 // group 5 = 1
	binary.BigEndian.PutUint32(a[12:16], n)
	return netip.AddrFrom16(a)
}

// IsFlycast reports whether addr has the shape of a Flycast address.
func IsFlycast(addr netip.Addr) bool {
	a := addr.As16()
	return addr.Is6() && a[6] == 0 && a[7] == 0 && a[8] == 0 && a[9] == 1 && a[10] == 0 && a[11] == 0
}

// Peer returns the address of peer number n (1..MaxPeerNumber) behind
// gateway gw: <prefix>:a7b:<gw>:<n>>8>:a:<(n&0xff)<<8|2>. The gateway routes
// the enclosing /120 to the peer.
func Peer(p netip.Prefix, gw uint16, n uint32) (netip.Addr, error) {
	if n == 0 || n > MaxPeerNumber {
		return netip.Addr{}, fmt.Errorf("peer number %d out of range 1..%d", n, MaxPeerNumber)
	}
	a := p.Masked().Addr().As16()
	binary.BigEndian.PutUint16(a[6:8], 0xa7b)
	binary.BigEndian.PutUint16(a[8:10], gw)
	binary.BigEndian.PutUint16(a[10:12], uint16(n>>8))
	binary.BigEndian.PutUint16(a[12:14], 0xa)
	binary.BigEndian.PutUint16(a[14:16], uint16(n&0xff)<<8|2)
	return netip.AddrFrom16(a), nil
}

// Machine returns the virtual 6PN address of machine number n behind gateway
// gw: <prefix>:a7b:b<gw>:<n hi>:<n lo>:2. Host group 0xb000|gw keeps machines
// apart from peers.
func Machine(p netip.Prefix, gw uint16, n uint32) (netip.Addr, error) {
	if n == 0 {
		return netip.Addr{}, fmt.Errorf("machine number must be at least 1")
	}
	if gw > MaxGateway {
		return netip.Addr{}, fmt.Errorf("gateway number %d above %d", gw, MaxGateway)
	}
	a := p.Masked().Addr().As16()
	binary.BigEndian.PutUint16(a[6:8], 0xa7b)
	binary.BigEndian.PutUint16(a[8:10], 0xb000|gw)
	binary.BigEndian.PutUint32(a[10:14], n)
	binary.BigEndian.PutUint16(a[14:16], 2)
	return netip.AddrFrom16(a), nil
}

// SameNetwork reports whether a and b lie in the same /48. A peer may reach
// only addresses in its own network's /48; this is the whole isolation rule,
// because addresses exposed to another network are allocated inside it.
func SameNetwork(a, b netip.Addr) bool {
	if !a.Is6() || !b.Is6() || a.Is4In6() || b.Is4In6() {
		return false
	}
	x, y := a.As16(), b.As16()
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4] && x[5] == y[5]
}
