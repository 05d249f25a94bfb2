// Package realclient runs the laptop walkthrough with the tools users run:
// wg-quick (with Debian's userspace wireguard-go), dig, ping, curl and wg,
// against a `devgate serve` process. The laptop is a network namespace this
// test makes, joined to the host by a veth pair; all traffic stays between
// the two. It needs root and those tools; without them it skips, saying so.
package realclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var tools = []string{"ip", "wg", "wg-quick", "wireguard-go", "dig", "curl", "ping"}

func requireRealClient(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real-client walkthrough skipped: needs root for network namespaces (CI runs it as root)")
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Skipf("real-client walkthrough skipped: missing %s (apt-get install wireguard-go wireguard-tools dnsutils curl iputils-ping iproute2)", strings.Join(missing, " "))
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("real-client walkthrough skipped: no /dev/net/tun")
	}
}

// run runs a command and fails the test on error, returning its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// buildDevgate builds the binary once per test run.
func buildDevgate(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "devgate")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/devgate").CombinedOutput()
	if err != nil {
		t.Fatalf("build devgate: %v\n%s", err, out)
	}
	return bin
}

// upstream is a resolver on the host standing in for the public DNS.
func upstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "example.com." && r.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR("example.com. 300 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// gateway is a `devgate serve` process.
type gateway struct {
	bin, dir, iface string
	cmd             *exec.Cmd
	mu              sync.Mutex
	log             bytes.Buffer
}

func (g *gateway) devgate(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, g.bin, append([]string{"--data-dir", g.dir}, args...)...)
}

func (g *gateway) logText() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startGateway(t *testing.T, bin, hostIP string, port int) *gateway {
	t.Helper()
	g := &gateway{bin: bin, dir: t.TempDir(), iface: fmt.Sprintf("dgt%d", rand.IntN(100000))}
	g.cmd = exec.Command(bin, "serve", "--data-dir", g.dir, "--listen-port", fmt.Sprint(port),
		"--endpoint", fmt.Sprintf("%s:%d", hostIP, port), "--upstream-dns", upstream(t),
		"--idle-timeout", "2s", "--wg-interface", g.iface)
	w := lockedWriter{&g.mu, &g.log}
	g.cmd.Stdout, g.cmd.Stderr = w, w
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { g.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			g.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.logText())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(g.logText(), "serving") {
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not start:\n%s", g.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return g
}

// laptop is a network namespace with a veth to the host and a wg-quick
// interface inside.
type laptop struct {
	ns, iface, conf string
}

// makeLaptop builds namespace ns joined to the host on 10.213.<n>.0/30.
func makeLaptop(t *testing.T, n int) (*laptop, string) {
	t.Helper()
	id := rand.IntN(100000)
	l := &laptop{ns: fmt.Sprintf("dglaptop%d", id), iface: fmt.Sprintf("dgwg%d", id)}
	host, peer := fmt.Sprintf("dgh%d", id), fmt.Sprintf("dgp%d", id)
	hostIP, lapIP := fmt.Sprintf("10.213.%d.1", n), fmt.Sprintf("10.213.%d.2", n)
	// Registered first, so it runs last: the laptop's wireguard-go must be
	// gone once the test has cleaned up (it removes its UAPI socket as it
	// exits).
	t.Cleanup(func() {
		sock := "/var/run/wireguard/" + l.iface + ".sock"
		for range 50 {
			if _, err := os.Stat(sock); errors.Is(err, fs.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("the laptop's wireguard-go (%s) still runs after the test's cleanup", l.iface)
	})
	run(t, "ip", "netns", "add", l.ns)
	t.Cleanup(func() {
		// Deleting the interface ends its wireguard-go too (wg-quick down
		// in up's cleanup is the polite way; this catches a failed up).
		runErr("ip", "-n", l.ns, "link", "del", l.iface)
		runErr("ip", "netns", "del", l.ns)
		runErr("ip", "link", "del", host)
		os.RemoveAll("/etc/netns/" + l.ns)
	})
	run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	run(t, "ip", "link", "set", peer, "netns", l.ns)
	run(t, "ip", "addr", "add", hostIP+"/30", "dev", host)
	run(t, "ip", "link", "set", host, "up")
	run(t, "ip", "netns", "exec", l.ns, "ip", "addr", "add", lapIP+"/30", "dev", peer)
	run(t, "ip", "netns", "exec", l.ns, "ip", "link", "set", peer, "up")
	run(t, "ip", "netns", "exec", l.ns, "ip", "link", "set", "lo", "up")
	// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over
	// /etc/resolv.conf: the laptop's own resolver file.
	if err := os.MkdirAll("/etc/netns/"+l.ns, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/etc/netns/"+l.ns+"/resolv.conf", []byte("# set by wg-quick\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return l, hostIP
}

// resolvconfShim stands in for resolvconf(8), which wg-quick calls to apply
// the config's DNS line: it writes the nameservers it is given to
// /etc/resolv.conf, which inside `ip netns exec` is the namespace's own.
const resolvconfShim = `#!/bin/sh
case "$1" in
-a) grep '^nameserver' > /etc/resolv.conf ;;
-d) : > /etc/resolv.conf ;;
esac
exit 0
`

func (l *laptop) up(t *testing.T, confText string) {
	t.Helper()
	dir := t.TempDir()
	l.conf = filepath.Join(dir, l.iface+".conf")
	if err := os.WriteFile(l.conf, []byte(confText), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered after t.TempDir's own cleanup, so it runs before the
	// config file is removed: wg-quick down needs it. Run after the
	// removal, it failed, and each test left a wireguard-go process
	// behind in a deleted namespace.
	t.Cleanup(func() { runErr("ip", "netns", "exec", l.ns, "wg-quick", "down", l.conf) })
	shimDir := filepath.Join(dir, "bin")
	os.Mkdir(shimDir, 0o755)
	if err := os.WriteFile(filepath.Join(shimDir, "resolvconf"), []byte(resolvconfShim), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runErr("ip", "netns", "exec", l.ns, "env", "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go",
		"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "PATH="+shimDir+":"+os.Getenv("PATH"), "wg-quick", "up", l.conf)
	if err != nil {
		t.Fatalf("wg-quick up: %v\n%s", err, out)
	}
}

func (l *laptop) exec(name string, args ...string) (string, error) {
	return runErr("ip", append([]string{"netns", "exec", l.ns, name}, args...)...)
}

func (l *laptop) must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := l.exec(name, args...)
	if err != nil {
		t.Fatalf("laptop: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func freeUDPPort(t *testing.T) int {
	pc, err := net.ListenPacket("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

var handshakeRE = regexp.MustCompile(`latest handshake: .*ago`)
var transferRE = regexp.MustCompile(`transfer: ([0-9.]+ [KMG]?i?B) received, ([0-9.]+ [KMG]?i?B) sent`)

func TestLaptopWalkthrough(t *testing.T) {
	requireRealClient(t)
	bin := buildDevgate(t)
	lap, hostIP := makeLaptop(t, rand.IntN(200)+1)
	g := startGateway(t, bin, hostIP, freeUDPPort(t))

	conf := g.devgate(t, "wireguard", "create", "personal", "local", "laptop", "stdout")
	lap.up(t, conf)
	resolv, _ := os.ReadFile("/etc/netns/" + lap.ns + "/resolv.conf")
	if !strings.Contains(string(resolv), "::3") {
		t.Fatalf("the config's DNS line did not reach the laptop's resolv.conf:\n%s", resolv)
	}

	work := t.TempDir()
	g.devgateIn(t, work, "launch", "--name", "hello", "--command", "devgate hello", "--flycast", "--internal-port", "80", "--no-deploy")
	if flyToml, _ := os.ReadFile(filepath.Join(work, "fly.toml")); bytes.Contains(flyToml, []byte("force_https = true")) {
		t.Errorf("launch --flycast wrote force_https = true:\n%s", flyToml)
	}
	g.devgateIn(t, work, "deploy")
	ips := g.devgateIn(t, work, "ips", "list")
	fields := strings.Fields(strings.SplitN(ips, "\n", 3)[1])
	if len(fields) < 3 || fields[0] != "v6" || fields[2] != "private" {
		t.Fatalf("ips list:\n%s", ips)
	}
	flycastIP := fields[1]

	t.Run("dig", func(t *testing.T) {
		if got := strings.TrimSpace(lap.must(t, "dig", "+short", "hello.flycast", "AAAA")); got != flycastIP {
			t.Errorf("dig hello.flycast AAAA = %q, want %s (ips list)", got, flycastIP)
		}
		if got := lap.must(t, "dig", "+short", "_apps.internal", "TXT"); !strings.Contains(got, "hello") {
			t.Errorf("dig _apps.internal TXT = %q, want hello", got)
		}
		if got := strings.TrimSpace(lap.must(t, "dig", "+short", "example.com", "A")); got != "192.0.2.7" {
			t.Errorf("dig example.com (public, forwarded) = %q, want 192.0.2.7 from the upstream", got)
		}
	})
	t.Run("ping", func(t *testing.T) {
		lap.must(t, "ping", "-6", "-c2", "-W2", "hello.flycast")
		resolver := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(resolv)), "# set by wg-quick"))
		resolver = strings.TrimSpace(strings.TrimPrefix(resolver, "nameserver"))
		lap.must(t, "ping", "-6", "-c2", "-W2", resolver)
	})
	t.Run("curl wakes a stopped machine", func(t *testing.T) {
		waitStopped(t, g, work)
		out := lap.must(t, "curl", "-sS", "--max-time", "30", "http://hello.flycast")
		if !strings.Contains(out, "Hello from") {
			t.Fatalf("cold curl: %q", out)
		}
		if ms := g.devgateIn(t, work, "machine", "list"); !strings.Contains(ms, "started") {
			t.Errorf("no machine started after a cold request:\n%s", ms)
		}
		if out := lap.must(t, "curl", "-sS", "--max-time", "10", "http://hello.flycast"); !strings.Contains(out, "Hello from") {
			t.Errorf("warm curl: %q", out)
		}
	})
	t.Run("wg show", func(t *testing.T) {
		out := run(t, "wg", "show", g.iface)
		if !handshakeRE.MatchString(out) || !transferRE.MatchString(out) {
			t.Errorf("wg show %s lacks a recent handshake and transfer:\n%s", g.iface, out)
		}
		// A peer that never connected is not loaded into wireguard-go;
		// wg show still lists it, as kernel WireGuard would.
		conf := g.devgate(t, "wireguard", "create", "personal", "local", "idle", "stdout")
		m := regexp.MustCompile(`PrivateKey = (\S+)`).FindStringSubmatch(conf)
		if m == nil {
			t.Fatalf("no PrivateKey in the config:\n%s", conf)
		}
		priv, err := wgtypes.ParseKey(m[1])
		if err != nil {
			t.Fatal(err)
		}
		if out := run(t, "wg", "show", g.iface, "peers"); !strings.Contains(out, priv.PublicKey().String()) {
			t.Errorf("wg show %s peers lacks the idle peer %s:\n%s", g.iface, priv.PublicKey(), out)
		}
		g.devgate(t, "wireguard", "remove", "personal", "idle")
	})
	t.Run("another organization is isolated", func(t *testing.T) {
		g.devgate(t, "orgs", "create", "acme")
		other, otherHost := makeLaptop(t, rand.IntN(50)+201)
		// The second laptop reaches the gateway over its own veth.
		otherConf := g.devgate(t, "wireguard", "create", "acme", "local", "other", "stdout")
		otherConf = strings.Replace(otherConf, "Endpoint = "+hostIP+":", "Endpoint = "+otherHost+":", 1)
		other.up(t, otherConf)
		// Its tunnel works: it sees its own network...
		if got := strings.TrimSpace(other.must(t, "dig", "+short", "_peer.internal", "TXT")); got != `"other"` {
			t.Fatalf("acme's laptop: _peer.internal = %q, want \"other\"", got)
		}
		// ...and nothing of personal's.
		if out, _ := other.exec("dig", "+short", "+time=2", "+tries=1", "hello.flycast", "AAAA"); strings.TrimSpace(out) != "" {
			t.Errorf("acme's laptop resolved hello.flycast: %q", out)
		}
		if out, err := other.exec("curl", "-sS", "--max-time", "5", "-g", "http://["+flycastIP+"]/"); err == nil {
			t.Errorf("acme's laptop reached personal's app: %q", out)
		}
	})
	t.Run("hand-edited configs", func(t *testing.T) {
		// A wrong private key: the handshake fails, the gateway says so once,
		// and the peer's last handshake stays "never".
		stale, staleHost := makeLaptop(t, rand.IntN(50)+151)
		conf := g.devgate(t, "wireguard", "create", "personal", "local", "stale", "stdout")
		conf = strings.Replace(conf, "Endpoint = "+hostIP+":", "Endpoint = "+staleHost+":", 1)
		conf = regexp.MustCompile(`PrivateKey = \S+`).ReplaceAllString(conf, "PrivateKey = "+run(t, "wg", "genkey"))
		stale.up(t, conf)
		if out, err := stale.exec("dig", "+time=2", "+tries=1", "_peer.internal", "TXT"); err == nil && strings.Contains(out, "ANSWER SECTION") {
			t.Errorf("a peer with the wrong key got an answer:\n%s", out)
		}
		list := g.devgate(t, "wireguard", "list")
		if !regexp.MustCompile(`(?m)^stale\s.*\snever\s`).MatchString(list) {
			t.Errorf("wireguard list does not show stale's handshake as never:\n%s", list)
		}
		if !strings.Contains(g.logText(), "invalid initiation") {
			t.Errorf("gateway logged nothing about the failed handshake:\n%s", g.logText())
		}
		// An address outside the peer's /120: packets are dropped and logged.
		// ("laptop" reuses its namespace with a fresh peer.)
		moved, movedHost := makeLaptop(t, rand.IntN(50)+101)
		conf = g.devgate(t, "wireguard", "create", "personal", "local", "moved", "stdout")
		conf = strings.Replace(conf, "Endpoint = "+hostIP+":", "Endpoint = "+movedHost+":", 1)
		conf = regexp.MustCompile(`:a:([0-9a-f]+)02/120`).ReplaceAllString(conf, ":a:ff02/120")
		moved.up(t, conf)
		if out, err := moved.exec("dig", "+time=2", "+tries=1", "_peer.internal", "TXT"); err == nil && strings.Contains(out, "ANSWER SECTION") {
			t.Errorf("a peer sending from another address got an answer:\n%s", out)
		}
		if !strings.Contains(g.logText(), "disallowed source address") {
			t.Errorf("gateway logged nothing about the spoofed source:\n%s", g.logText())
		}
	})
	t.Run("removed peer reaches nothing", func(t *testing.T) {
		g.devgate(t, "wireguard", "remove", "personal", "laptop")
		if out, err := lap.exec("dig", "+time=2", "+tries=1", "hello.flycast", "AAAA"); err == nil && strings.Contains(out, "ANSWER SECTION") {
			t.Errorf("a removed peer still resolves:\n%s", out)
		}
		if out, err := lap.exec("curl", "-sS", "--max-time", "5", "-g", "http://["+flycastIP+"]/"); err == nil {
			t.Errorf("a removed peer still reaches the app: %q", out)
		}
	})
}

func (g *gateway) devgateIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(g.bin, append([]string{"--data-dir", g.dir}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("devgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitStopped(t *testing.T, g *gateway, work string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ms := g.devgateIn(t, work, "machine", "list")
		if !strings.Contains(ms, "started") && !strings.Contains(ms, "starting") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("machines still running:\n%s", ms)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
