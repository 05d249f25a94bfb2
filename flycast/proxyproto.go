package flycast

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// proxyV2Sig opens every PROXY protocol v2 header.
const proxyV2Sig = "\r\n\r\n\x00\r\nQUIT\n"

// proxyHeader encodes a PROXY protocol header ("v1" text or "v2" binary)
// carrying the client's address and the Flycast address it connected to.
// Mixed families are sent as IPv6 (IPv4-mapped).
func proxyHeader(version string, src, dst netip.AddrPort) []byte {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	v4 := sa.Is4() && da.Is4()
	if !v4 {
		sa, da = as16(sa), as16(da)
	}
	if version == "v2" {
		b := make([]byte, 0, 16+36)
		b = append(b, proxyV2Sig...)
		b = append(b, 0x21) // version 2, command PROXY
		if v4 {
			b = append(b, 0x11) // AF_INET, STREAM
			b = binary.BigEndian.AppendUint16(b, 12)
		} else {
			b = append(b, 0x21) // AF_INET6, STREAM
			b = binary.BigEndian.AppendUint16(b, 36)
		}
		b = append(b, sa.AsSlice()...)
		b = append(b, da.AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, src.Port())
		b = binary.BigEndian.AppendUint16(b, dst.Port())
		return b
	}
	fam := "TCP6"
	if v4 {
		fam = "TCP4"
	}
	b := make([]byte, 0, 108) // the v1 maximum
	b = append(b, "PROXY "+fam+" "...)
	b = append(b, sa.String()...)
	b = append(b, ' ')
	b = append(b, da.String()...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	b = append(b, "\r\n"...)
	return b
}

func as16(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom16(a.As16())
	}
	return a
}
