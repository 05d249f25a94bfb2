package flycast

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// readProxyHeaderStrict is an independent reader of the PROXY protocol (the
// spec's v1 text and v2 binary forms), as a backend such as HAProxy or
// nginx parses it. It returns the addresses and how many bytes it used.
func readProxyHeaderStrict(t *testing.T, b []byte) (src, dst netip.AddrPort, n int) {
	t.Helper()
	if bytes.HasPrefix(b, []byte(proxyV2Sig)) {
		if len(b) < 16 || b[12] != 0x21 {
			t.Fatalf("v2: bad version/command in % x", b)
		}
		l := int(binary.BigEndian.Uint16(b[14:16]))
		if len(b) != 16+l {
			t.Fatalf("v2: length field %d, header has %d bytes after the fixed part", l, len(b)-16)
		}
		body := b[16:]
		var alen int
		switch b[13] {
		case 0x11:
			alen = 4
		case 0x21:
			alen = 16
		default:
			t.Fatalf("v2: family/protocol byte %#x", b[13])
		}
		if l != 2*alen+4 {
			t.Fatalf("v2: length %d for address size %d", l, alen)
		}
		sa, _ := netip.AddrFromSlice(body[:alen])
		da, _ := netip.AddrFromSlice(body[alen : 2*alen])
		sp := binary.BigEndian.Uint16(body[2*alen:])
		dp := binary.BigEndian.Uint16(body[2*alen+2:])
		return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp), len(b)
	}
	line, ok := bytes.CutSuffix(b, []byte("\r\n"))
	if !ok || bytes.Contains(line, []byte("\r\n")) {
		t.Fatalf("v1: not one CRLF-terminated line: %q", b)
	}
	if len(b) > 107 {
		t.Fatalf("v1: %d bytes, the spec allows at most 107", len(b))
	}
	f := strings.Split(string(line), " ")
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") {
		t.Fatalf("v1: bad fields %q", line)
	}
	sa, err1 := netip.ParseAddr(f[2])
	da, err2 := netip.ParseAddr(f[3])
	sp, err3 := strconv.ParseUint(f[4], 10, 16)
	dp, err4 := strconv.ParseUint(f[5], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		t.Fatalf("v1: unparsable %q", line)
	}
	if (f[1] == "TCP4") != (sa.Is4() && da.Is4()) || sa.Zone() != "" {
		t.Fatalf("v1: family %s with addresses %s %s", f[1], sa, da)
	}
	return netip.AddrPortFrom(sa, uint16(sp)), netip.AddrPortFrom(da, uint16(dp)), len(b)
}

// FuzzProxyHeader generates PROXY protocol headers for arbitrary address
// pairs (IPv4, IPv6, IPv4-mapped, mixed) and reads them back with an
// independent parser: the addresses and ports survive, the header is well
// formed, and nothing of the stream after it is consumed.
func FuzzProxyHeader(f *testing.F) {
	for _, s := range []struct {
		src, dst string
		v2       bool
	}{
		{"[fdaa:0:1:a7b:1:0:a:102]:51234", "[fdaa:0:1:0:1::1]:80", false},
		{"[fdaa:0:1:a7b:1:0:a:102]:51234", "[fdaa:0:1:0:1::1]:80", true},
		{"1.2.3.4:1", "5.6.7.8:65535", false},
		{"1.2.3.4:1", "5.6.7.8:65535", true},
		{"[::ffff:1.2.3.4]:9", "[fdaa::1]:0", false},
		{"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", false},
	} {
		src, dst := netip.MustParseAddrPort(s.src), netip.MustParseAddrPort(s.dst)
		f.Add(src.Addr().AsSlice(), src.Port(), dst.Addr().AsSlice(), dst.Port(), s.v2)
	}
	f.Fuzz(func(t *testing.T, sa []byte, sp uint16, da []byte, dp uint16, v2 bool) {
		s, ok1 := netip.AddrFromSlice(sa)
		d, ok2 := netip.AddrFromSlice(da)
		if !ok1 || !ok2 {
			return
		}
		src, dst := netip.AddrPortFrom(s, sp), netip.AddrPortFrom(d, dp)
		version := "v1"
		if v2 {
			version = "v2"
		}
		hdr := proxyHeader(version, src, dst)
		gs, gd, n := readProxyHeaderStrict(t, hdr)
		if n != len(hdr) {
			t.Fatalf("parser used %d of %d bytes", n, len(hdr))
		}
		// Mixed families travel as IPv6 (IPv4-mapped); compare unmapped.
		if gs.Addr().Unmap() != s.Unmap() || gs.Port() != sp || gd.Addr().Unmap() != d.Unmap() || gd.Port() != dp {
			t.Fatalf("%s %s -> %s: read back %s %s", version, src, dst, gs, gd)
		}
	})
}
