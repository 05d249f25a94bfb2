package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/client"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	mdns "github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// crashLoops is how many times the crash test kills the gateway.
const crashLoops = 6

// gatewayProc is this test binary re-executed as a gateway (envServe).
type gatewayProc struct {
	cmd *exec.Cmd
}

func startGatewayProc(t *testing.T, dir string, port int) *gatewayProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envServe+"="+dir, fmt.Sprintf("%s=%d", envServePort, port))
	cmd.Stderr = os.Stderr
	// If the test dies, so does the gateway (and, by its own Pdeathsig, its machines).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &gatewayProc{cmd: cmd}
	cl := api.NewUnixClient(dir)
	eventually(t, 30*time.Second, "gateway process answers its API", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cl.Status(ctx)
		return err == nil
	})
	return p
}

func (p *gatewayProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// acked records the writes the API acknowledged.
type acked struct {
	mu    sync.Mutex
	peers map[string]wgtypes.Key // name -> private key
	apps  map[string]bool        // name -> deployed
	ips   map[string]string      // address -> app
}

// writer issues writes through the API until ctx ends or the gateway dies,
// recording every one that was acknowledged.
func (a *acked) writer(ctx context.Context, cl *api.Client, round int) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("r%d-%d", round, i)
		switch i % 3 {
		case 0:
			priv, _ := wgtypes.GeneratePrivateKey()
			if _, err := cl.CreatePeer(ctx, api.CreatePeerRequest{Org: "personal", Name: name, PublicKey: priv.PublicKey().String()}); err != nil {
				return
			}
			a.mu.Lock()
			a.peers[name] = priv
			a.mu.Unlock()
		case 1:
			cfg := helloConfig(name)
			if _, err := cl.CreateApp(ctx, api.CreateAppRequest{Name: name, Flycast: true, Config: cfg}); err != nil {
				return
			}
			a.mu.Lock()
			a.apps[name] = false
			a.mu.Unlock()
			if _, err := cl.Deploy(ctx, name, api.DeployRequest{Config: cfg}); err != nil {
				return
			}
			a.mu.Lock()
			a.apps[name] = true
			a.mu.Unlock()
		case 2:
			a.mu.Lock()
			var app string
			for n := range a.apps {
				app = n
				break
			}
			a.mu.Unlock()
			if app == "" {
				continue
			}
			ip, err := cl.AllocateIP(ctx, app, api.AllocateIPRequest{})
			if err != nil {
				return
			}
			a.mu.Lock()
			a.ips[ip.Address.String()] = app
			a.mu.Unlock()
		}
	}
}

// TestCrashRestart kills the gateway process with SIGKILL at random moments
// while peers, apps, deploys and addresses are being written, restarts it,
// crashLoops times. Every acknowledged write survives, nothing is
// half-written, and at the end an acknowledged peer connects and resolves.
func TestCrashRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the gateway several times")
	}
	dir := t.TempDir()
	port := freeUDPPort(t)
	a := &acked{peers: map[string]wgtypes.Key{}, apps: map[string]bool{}, ips: map[string]string{}}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	cl := api.NewUnixClient(dir)
	for round := range crashLoops {
		p := startGatewayProc(t, dir, port)
		checkState(t, cl, a, round)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.writer(ctx, cl, round) }()
		time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
		p.kill()
		cancel()
		<-done
		a.mu.Lock()
		t.Logf("round %d: killed; so far %d peers, %d apps, %d extra addresses acknowledged", round, len(a.peers), len(a.apps), len(a.ips))
		a.mu.Unlock()
	}
	p := startGatewayProc(t, dir, port)
	defer p.kill()
	checkState(t, cl, a, crashLoops)
	// An acknowledged peer works end to end after all that.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := cl.ListPeers(ctx, "personal")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := wgtypes.ParseKey(st.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var tried bool
	for _, x := range ps {
		priv, ok := a.peers[x.Name]
		if !ok {
			continue
		}
		tried = true
		cfg := peers.ClientConfig(priv, gw, x.Address, netip.PrefixFrom(x.Address, 48).Masked(), fmt.Sprintf("127.0.0.1:%d", port))
		c, err := client.New(cfg, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q := new(mdns.Msg)
		q.SetQuestion(x.Name+"._peer.internal.", mdns.TypeAAAA)
		r, err := c.Exchange(ctx, q)
		if err != nil || len(r.Answer) != 1 {
			t.Errorf("peer %s after %d crashes: %v %v", x.Name, crashLoops, r, err)
		}
		break
	}
	if !tried {
		t.Errorf("no acknowledged peer to try (the writer acknowledged %d)", len(a.peers))
	}
}

// checkState asserts every acknowledged write is stored and nothing stored
// is half-written.
func checkState(t *testing.T, cl *api.Client, a *acked, round int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ps, err := cl.ListPeers(ctx, "")
	if err != nil {
		t.Fatalf("round %d: list peers: %v", round, err)
	}
	apps, err := cl.ListApps(ctx)
	if err != nil {
		t.Fatalf("round %d: list apps: %v", round, err)
	}
	havePeer := map[string]bool{}
	byAddr := map[netip.Addr]string{}
	for _, p := range ps {
		havePeer[p.Name] = true
		if !p.Address.IsValid() {
			t.Errorf("round %d: peer %s half-written: no address", round, p.Name)
		}
		if other, dup := byAddr[p.Address]; dup {
			t.Errorf("round %d: peers %s and %s share address %s", round, other, p.Name, p.Address)
		}
		byAddr[p.Address] = p.Name
		if _, err := wgtypes.ParseKey(p.PublicKey); err != nil {
			t.Errorf("round %d: peer %s has no valid public key: %v", round, p.Name, err)
		}
	}
	haveApp := map[string]store.App{}
	for _, ap := range apps {
		haveApp[ap.Name] = ap
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name := range a.peers {
		if !havePeer[name] {
			t.Errorf("round %d: acknowledged peer %s is gone", round, name)
		}
	}
	for name, deployed := range a.apps {
		ap, ok := haveApp[name]
		if !ok {
			t.Errorf("round %d: acknowledged app %s is gone", round, name)
			continue
		}
		if deployed && (!ap.Deployed || len(ap.Config) == 0) {
			t.Errorf("round %d: acknowledged deploy of %s lost: deployed=%v, %d bytes of config", round, name, ap.Deployed, len(ap.Config))
		}
	}
	for _, ap := range apps {
		if len(ap.Config) == 0 {
			t.Errorf("round %d: app %s has no config", round, ap.Name)
		}
		ips, err := cl.ListIPs(ctx, ap.Name)
		if err != nil {
			t.Fatalf("round %d: ips of %s: %v", round, ap.Name, err)
		}
		ms, err := cl.ListMachines(ctx, ap.Name)
		if err != nil {
			t.Fatalf("round %d: machines of %s: %v", round, ap.Name, err)
		}
		if a.apps[ap.Name] && (len(ips) == 0 || len(ms) < DefaultMachines) {
			t.Errorf("round %d: acknowledged deploy of %s has %d addresses and %d machines", round, ap.Name, len(ips), len(ms))
		}
		for _, m := range ms {
			if !m.Address.IsValid() || m.App != ap.Name {
				t.Errorf("round %d: machine %s half-written: %+v", round, m.ID, m)
			}
		}
		for _, ip := range ips {
			if ip.App != ap.Name || !ip.Address.IsValid() {
				t.Errorf("round %d: address record half-written: %+v", round, ip)
			}
		}
	}
	for addr, app := range a.ips {
		ips, err := cl.ListIPs(ctx, app)
		if err != nil {
			t.Errorf("round %d: acknowledged address %s of %s: %v", round, addr, app, err)
			continue
		}
		var found bool
		for _, ip := range ips {
			found = found || ip.Address.String() == addr
		}
		if !found {
			t.Errorf("round %d: acknowledged address %s of %s is gone", round, addr, app)
		}
	}
}
