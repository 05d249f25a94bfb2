// Command stocknet is the "stock tun/netstack" yardstick of bench/run: a
// WireGuard endpoint built the way wireproxy and most userspace gateways
// build one, from wireguard-go's own tun/netstack package with its default
// settings, forwarding TCP ports on its netstack address to backends with
// io.Copy. It exists only to be measured against devgate; it has none of
// devgate's tuning (GRO, batching link, buffer sizes, PSH, GSO limits).
//
//	stocknet -addr fd00:c::1 -listen-port 51822 -key KEYFILE \
//	  -peer PUBKEY -allowed fd00:c::2/128 -forward 5201=[::1]:5202,8082=[::1]:8082
package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func main() {
	addr := flag.String("addr", "", "the netstack's IPv6 address")
	port := flag.Int("listen-port", 51822, "WireGuard UDP port")
	keyFile := flag.String("key", "", "file holding the private key (base64, as wg genkey writes it)")
	peer := flag.String("peer", "", "the peer's public key (base64)")
	allowed := flag.String("allowed", "", "the peer's allowed IPs, comma-separated")
	forward := flag.String("forward", "", "PORT=HOST:PORT pairs, comma-separated")
	flag.Parse()
	if err := run(*addr, *port, *keyFile, *peer, *allowed, *forward); err != nil {
		log.Fatalf("stocknet: %v", err)
	}
}

func run(addr string, port int, keyFile, peer, allowed, forward string) error {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("-key: %w", err)
	}
	priv, err := wgtypes.ParseKey(strings.TrimSpace(string(key)))
	if err != nil {
		return fmt.Errorf("-key %s: %w", keyFile, err)
	}
	pub, err := wgtypes.ParseKey(peer)
	if err != nil {
		return fmt.Errorf("-peer: %w", err)
	}
	tunDev, tnet, err := netstack.CreateNetTUN([]netip.Addr{ip}, nil, 1420)
	if err != nil {
		return err
	}
	dev := device.NewDevice(tunDev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "stocknet: "))
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\n",
		hex.EncodeToString(priv[:]), port, hex.EncodeToString(pub[:]))
	for _, a := range strings.Split(allowed, ",") {
		uapi += "allowed_ip=" + a + "\n"
	}
	if err := dev.IpcSet(uapi); err != nil {
		return err
	}
	if err := dev.Up(); err != nil {
		return err
	}
	defer dev.Close()
	for _, f := range strings.Split(forward, ",") {
		from, to, ok := strings.Cut(f, "=")
		p, err := strconv.Atoi(from)
		if !ok || err != nil {
			return fmt.Errorf("-forward %q: want PORT=HOST:PORT", f)
		}
		l, err := tnet.ListenTCP(&net.TCPAddr{IP: ip.AsSlice(), Port: p})
		if err != nil {
			return err
		}
		go serve(l, to)
	}
	fmt.Println("serving")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

// serve forwards each accepted connection to target, as wireproxy does.
func serve(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer b.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(b, c)
				b.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, b)
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			<-done
		}()
	}
}
