package netstack

import (
	"net"
	"net/netip"
)

// TCPRequest is a new inbound TCP connection whose SYN has arrived and whose
// handshake is not yet complete. The handler must call exactly one of Accept
// or Refuse. Until then the client's SYN is held: the client sees a slow
// connect, not an error, so a handler may wake and dial a backend first.
type TCPRequest interface {
	// Src is the peer's address and port; Dst is the address it connected to.
	Src() netip.AddrPort
	Dst() netip.AddrPort
	// Accept completes the handshake and returns the connection.
	Accept() (net.Conn, error)
	// Refuse answers the SYN with a RST.
	Refuse()
}

// TCPHandler serves TCP connections to one address. ServeTCP runs on its own
// goroutine and may block.
type TCPHandler interface {
	ServeTCP(r TCPRequest)
}

// Router says which addresses exist and who serves them. Methods are called
// on the packet path and must not block.
type Router interface {
	// RouteTCP returns the handler for a new connection to dst from src, or
	// nil when nothing serves dst's port (the stack then sends a RST).
	RouteTCP(src, dst netip.AddrPort) TCPHandler
	// Exists reports whether dst is an address that answers ICMP echo.
	Exists(dst netip.Addr) bool
}
