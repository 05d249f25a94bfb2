package tunnel

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PeerStats is one peer's state from the device.
type PeerStats struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort // zero until the peer has sent a packet
	LastHandshake time.Time      // zero if never
	RxBytes       uint64
	TxBytes       uint64
	AllowedIPs    []netip.Prefix
}

type deviceState struct {
	ListenPort int
}

// parseIpcGet parses the UAPI "get" format (key=value lines; public_key
// starts a peer).
func parseIpcGet(s string) (deviceState, []PeerStats, error) {
	var dev deviceState
	var ps []PeerStats
	var cur *PeerStats
	var hsSec, hsNsec int64
	flush := func() {
		if cur != nil && (hsSec != 0 || hsNsec != 0) {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		hsSec, hsNsec = 0, 0
	}
	for line := range strings.SplitSeq(s, "\n") {
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return dev, nil, fmt.Errorf("parse wireguard state: line %q has no '='", line)
		}
		var err error
		switch key {
		case "listen_port":
			dev.ListenPort, err = strconv.Atoi(value)
		case "public_key":
			flush()
			var k wgtypes.Key
			if k, err = parseHexKey(value); err == nil {
				ps = append(ps, PeerStats{PublicKey: k})
				cur = &ps[len(ps)-1]
			}
		default:
			if cur == nil {
				continue // device keys we do not need (private_key, fwmark)
			}
			switch key {
			case "endpoint":
				cur.Endpoint, err = netip.ParseAddrPort(value)
			case "last_handshake_time_sec":
				hsSec, err = strconv.ParseInt(value, 10, 64)
			case "last_handshake_time_nsec":
				hsNsec, err = strconv.ParseInt(value, 10, 64)
			case "rx_bytes":
				cur.RxBytes, err = strconv.ParseUint(value, 10, 64)
			case "tx_bytes":
				cur.TxBytes, err = strconv.ParseUint(value, 10, 64)
			case "allowed_ip":
				var p netip.Prefix
				if p, err = netip.ParsePrefix(value); err == nil {
					cur.AllowedIPs = append(cur.AllowedIPs, p)
				}
			}
		}
		if err != nil {
			return dev, nil, fmt.Errorf("parse wireguard state: %s: %w", key, err)
		}
	}
	flush()
	return dev, ps, nil
}

// parseHexKey parses a key as UAPI writes it: 64 hex digits.
func parseHexKey(s string) (wgtypes.Key, error) {
	var k wgtypes.Key
	if len(s) != 2*wgtypes.KeyLen {
		return k, fmt.Errorf("key is %d hex digits, want %d", len(s), 2*wgtypes.KeyLen)
	}
	_, err := hex.Decode(k[:], []byte(s))
	return k, err
}
