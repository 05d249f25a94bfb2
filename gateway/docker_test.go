package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	devclient "github.com/devgate/devgate/client"
	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// helloImage is built from this tree by images/build.sh, FROM scratch.
const helloImage = "devgate-hello:local"

var (
	buildOnce sync.Once
	buildErr  error
)

// dockerEngine returns a client, or skips the test when no engine answers.
func dockerEngine(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
	}
	if err != nil {
		t.Skipf("no Docker engine answers (%v): skipping the Docker test", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// buildImages runs images/build.sh once per test binary run. It pulls
// nothing: the images are FROM scratch.
func buildImages(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("../images/build.sh").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("images/build.sh: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

func randName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// dockerScope gives the test its own bridge network (the gateway adopts
// only containers on it) and removes every container on it, then the
// network, when the test ends, even after a failure. Call it before
// newHarness, so that this cleanup runs after the gateway has stopped.
func dockerScope(t *testing.T) (*client.Client, string) {
	t.Helper()
	cli := dockerEngine(t)
	buildImages(t)
	net := randName("devgate-test-")
	t.Setenv(DockerNetworkEnv, net)
	t.Cleanup(func() { removeScope(t, cli, net) })
	return cli, net
}

func removeScope(t testing.TB, cli *client.Client, net string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("network", net)})
	if err != nil {
		t.Errorf("clean up: list containers: %v", err)
	}
	for _, c := range res.Items {
		if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			t.Errorf("clean up: remove container %.12s: %v", c.ID, err)
		}
	}
	if _, err := cli.NetworkRemove(ctx, net, client.NetworkRemoveOptions{}); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("clean up: remove network %s: %v", net, err)
	}
}

// containersOf lists the containers of app on net, by label.
func containersOf(t testing.TB, cli *client.Client, net, app string) []container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("network", net).Add("label", machines.LabelApp+"="+app)})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	return res.Items
}

func countRunning(cs []container.Summary) int {
	n := 0
	for _, c := range cs {
		if c.State == container.StateRunning {
			n++
		}
	}
	return n
}

// launchImage creates and deploys an app that runs the hello image.
func (h *harness) launchImage(name, extra string) (api.DeployResponse, error) {
	h.t.Helper()
	text := appconfig.Generate(appconfig.LaunchOptions{App: name, PrimaryRegion: "local", Image: helloImage, InternalPort: 80, Flycast: true})
	text = append(text, []byte(extra)...)
	if _, err := h.api.CreateApp(h.ctx(), api.CreateAppRequest{Name: name, Flycast: true, Config: text}); err != nil {
		h.t.Fatalf("create app %s: %v", name, err)
	}
	return h.api.Deploy(h.ctx(), name, api.DeployRequest{Config: text})
}

var helloFrom = regexp.MustCompile(`Hello from ([0-9a-f]+)`)

// TestDockerMachines: wake by a request, both containers serve, idle stop,
// and a container that exits at start.
func TestDockerMachines(t *testing.T) {
	cli, net := dockerScope(t)
	h := newHarness(t)
	if _, ok := h.g.drivers["docker"]; !ok {
		t.Fatal("the gateway has no docker driver although an engine answers")
	}
	c := h.dial(h.peer("personal", "laptop"))
	res, err := h.launchImage("web", "\n[devgate]\n  idle_timeout = '1s'\n")
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	for _, m := range res.Machines {
		if m.Driver != "docker" || m.Image != helloImage {
			t.Errorf("machine %s: driver %q image %q, want docker %s", m.ID, m.Driver, m.Image, helloImage)
		}
	}
	if n := len(containersOf(t, cli, net, "web")); n != DefaultMachines {
		t.Fatalf("%d containers labeled devgate.app=web, want %d", n, DefaultMachines)
	}

	t.Run("idle containers are stopped", func(t *testing.T) {
		eventually(t, 60*time.Second, "both machines stopped by auto-stop", func() bool {
			return countState(h.machines("web"), store.MachineStopped) == DefaultMachines
		})
		if n := countRunning(containersOf(t, cli, net, "web")); n != 0 {
			t.Errorf("%d containers still running after auto-stop", n)
		}
	})
	t.Run("a request wakes a stopped container", func(t *testing.T) {
		resp, body := get(t, c, "http://web.flycast/")
		if resp.StatusCode != http.StatusOK || !helloFrom.MatchString(body) {
			t.Fatalf("cold request: %s %q", resp.Status, body)
		}
		if n := countState(h.machines("web"), store.MachineStarted); n != 1 {
			t.Errorf("%d machines started after one cold request, want 1", n)
		}
		if n := countRunning(containersOf(t, cli, net, "web")); n != 1 {
			t.Errorf("%d containers running after one cold request, want 1", n)
		}
	})
	t.Run("both containers serve", func(t *testing.T) {
		seen := map[string]bool{}
		for _, m := range h.machines("web") {
			if err := h.api.StartMachine(h.ctx(), m.ID); err != nil {
				t.Fatalf("start %s: %v", m.ID, err)
			}
			// Each machine's 6PN address reaches its own container.
			resp, body := get(t, c, "http://["+m.Address.String()+"]:80/")
			mm := helloFrom.FindStringSubmatch(body)
			if resp.StatusCode != http.StatusOK || mm == nil {
				t.Fatalf("machine %s: %s %q", m.ID, resp.Status, body)
			}
			seen[mm[1]] = true
		}
		if len(seen) != DefaultMachines {
			t.Errorf("answers came from %d containers, want %d: %v", len(seen), DefaultMachines, seen)
		}
		// Through the Flycast address, concurrent requests spread.
		var mu sync.Mutex
		via := map[string]int{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, body := get(t, c, "http://web.flycast/")
				if mm := helloFrom.FindStringSubmatch(body); mm != nil {
					mu.Lock()
					via[mm[1]]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		t.Logf("Flycast requests per container: %v", via)
		if len(via) == 0 {
			t.Error("no request through the Flycast address was answered")
		}
	})
	t.Run("a container that exits at start", func(t *testing.T) {
		// hello refuses a positional argument and exits with code 2.
		_, err := h.launchImage("bad", "\n[processes]\n  app = 'no-such-argument'\n")
		if err == nil || !strings.Contains(err.Error(), "no machine") {
			t.Errorf("deploy of a failing container: err = %v, want 'no machine ... started'", err)
		}
		resp, body := get(t, c, "http://bad.flycast/")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "bad") {
			t.Errorf("request to a failing app: %s %q; want 503 naming the app", resp.Status, body)
		}
		ms := h.machines("bad")
		if countState(ms, store.MachineFailed) == 0 {
			t.Errorf("no machine recorded failed: %+v", ms)
		}
		for _, m := range ms {
			if m.State == store.MachineFailed && !strings.Contains(m.Reason, "code 2") {
				t.Errorf("failed machine %s: reason %q does not give the exit code", m.ID, m.Reason)
			}
		}
	})
}

// createLabeled creates a container the way compose does: labels, the
// shared network, created but not started.
func createLabeled(t *testing.T, cli *client.Client, net, name string, labels map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             name,
		Config:           &container.Config{Image: helloImage, Labels: labels},
		HostConfig:       &container.HostConfig{NetworkMode: container.NetworkMode(net)},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{net: {}}},
	})
	if err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	return res.ID
}

// TestDockerAdoptionAndRestart: a labeled container created through the API
// is adopted and woken; a restart re-adopts running and stopped containers
// without duplicates, and removes orphans.
func TestDockerAdoptionAndRestart(t *testing.T) {
	cli, net := dockerScope(t)
	h := newHarness(t)
	c := h.dial(h.peer("personal", "laptop"))
	if _, err := h.launchImage("web", ""); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	ms := h.machines("web")
	if err := h.api.StopMachine(h.ctx(), ms[1].ID); err != nil {
		t.Fatal(err)
	}

	// Adoption of a container created elsewhere, while the gateway runs.
	cid := createLabeled(t, cli, net, randName("compose-like-"), map[string]string{
		machines.LabelApp: "adopted", machines.LabelInternalPort: "80", machines.LabelIdleTimeout: "1h",
	})
	var adopted []store.Machine
	eventually(t, 30*time.Second, "the labeled container adopted as a machine", func() bool {
		all, err := h.api.ListMachines(h.ctx(), "adopted")
		adopted = all
		return err == nil && len(all) == 1
	})
	if adopted[0].Driver != "docker" || adopted[0].Image != machines.ContainerRefPrefix+cid || adopted[0].State != store.MachineStopped {
		t.Errorf("adopted machine = %+v; want driver docker, image %s%s, stopped", adopted[0], machines.ContainerRefPrefix, cid)
	}
	ips, err := h.api.ListIPs(h.ctx(), "adopted")
	if err != nil || len(ips) != 1 {
		t.Fatalf("adopted app addresses: %v, %v; want one Flycast address", ips, err)
	}
	resp, body := get(t, c, "http://adopted.flycast/")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Hello from "+cid[:12]) {
		t.Fatalf("request to the adopted app: %s %q; want an answer from container %.12s", resp.Status, body, cid)
	}

	// An orphan left while the gateway was down: a container made for a
	// machine the store does not have.
	h.stop()
	orphan := createLabeled(t, cli, net, randName("devgate-web-orphan-"), map[string]string{
		machines.LabelApp: "web", machines.LabelMachine: "0123456789abcd",
	})
	h.start()
	for _, app := range []string{"web", "adopted"} {
		before := map[string]bool{}
		if app == "web" {
			for _, m := range ms {
				before[m.ID] = true
			}
		} else {
			before[adopted[0].ID] = true
		}
		after := h.machines(app)
		if len(after) != len(before) {
			t.Fatalf("app %s after restart: %d machines, want %d: %+v", app, len(after), len(before), after)
		}
		for _, m := range after {
			if !before[m.ID] {
				t.Errorf("app %s after restart: new machine %s (a duplicate)", app, m.ID)
			}
		}
	}
	after := h.machines("web")
	if countState(after, store.MachineStarted) != 1 || countState(after, store.MachineStopped) != 1 {
		t.Errorf("web after restart: states %+v; want one started, one stopped as the containers are", after)
	}
	if got := h.machines("adopted"); got[0].State != store.MachineStarted {
		t.Errorf("adopted machine after restart: %s, want started (its container runs)", got[0].State)
	}
	if n := len(containersOf(t, cli, net, "web")); n != DefaultMachines {
		t.Errorf("%d containers of web after restart, want %d (the orphan removed)", n, DefaultMachines)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.ContainerInspect(ctx, orphan, client.ContainerInspectOptions{}); err == nil {
		t.Errorf("orphan container %.12s still exists after restart", orphan)
	}
	c2 := h.dial(h.peer("personal", "laptop2"))
	for _, app := range []string{"web", "adopted"} {
		if resp, _ := get(t, c2, "http://"+app+".flycast/"); resp.StatusCode != http.StatusOK {
			t.Errorf("%s after restart: %s", app, resp.Status)
		}
	}
	// A stopped adopted machine is woken again after the restart.
	if err := h.api.StopMachine(h.ctx(), adopted[0].ID); err != nil {
		t.Fatal(err)
	}
	if resp, body := get(t, c2, "http://adopted.flycast/"); resp.StatusCode != http.StatusOK || !strings.Contains(body, cid[:12]) {
		t.Errorf("wake of the adopted container after restart: %s %q", resp.Status, body)
	}

	// Removed elsewhere (compose down): the machine goes too. Its own
	// deadline: the requests above may have used up the inspect's.
	rmCtx, rmCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rmCancel()
	if _, err := cli.ContainerRemove(rmCtx, cid, client.ContainerRemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the machine of a removed container deleted", func() bool {
		all, err := h.api.ListMachines(h.ctx(), "adopted")
		return err == nil && len(all) == 0
	})
}

// FuzzAdoptLabels: labels come from whoever can create a container; any
// value either is refused or yields a fly.toml that parses.
func FuzzAdoptLabels(f *testing.F) {
	f.Add("hello", "80", "stop", "0", "30s", "personal")
	f.Add("hello", "8080", "off", "2", "", "")
	f.Add("x'y", "0", "maybe", "-1", "forever", "a\nb")
	f.Add("hello", "80", "suspend", "64", "1h", "org-1")
	f.Fuzz(func(t *testing.T, app, port, autoStop, minRun, idle, org string) {
		l := map[string]string{machines.LabelApp: app, machines.LabelInternalPort: port, machines.LabelAutoStop: autoStop, machines.LabelMinRunning: minRun}
		if idle != "" {
			l[machines.LabelIdleTimeout] = idle
		}
		if org != "" {
			l[machines.LabelOrg] = org
		}
		al, err := parseAdoptLabels(l)
		if err != nil {
			return
		}
		text := al.config("local")
		cfg, _, err := appconfig.Parse("fly.toml", text)
		if err != nil {
			t.Fatalf("labels %v gave a fly.toml that does not parse: %v\n%s", l, err, text)
		}
		if cfg.App != al.App || len(cfg.Services()) != 1 || cfg.Services()[0].InternalPort != al.InternalPort || cfg.IdleTimeout() != al.IdleTimeout {
			t.Fatalf("labels %v: config says app %q services %+v idle %v", l, cfg.App, cfg.Services(), cfg.IdleTimeout())
		}
	})
}

// TestDockerCompose runs examples/compose: the gateway in a container adopts
// the two hello replicas, and a userspace WireGuard client reaches
// hello.flycast through the published UDP port.
func TestDockerCompose(t *testing.T) {
	dockerEngine(t)
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("docker-compose is not installed: skipping the compose example test")
	}
	buildImages(t)
	project := randName("devgatecompose")
	port := freeUDPPort(t)
	env := append(os.Environ(),
		"DEVGATE_NETWORK="+project,
		"DEVGATE_WG_PORT="+fmt.Sprint(port),
		"DEVGATE_ENDPOINT=127.0.0.1:"+fmt.Sprint(port),
		"HELLO_IDLE_TIMEOUT=2s",
	)
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, compose, append([]string{"-p", project}, args...)...)
		cmd.Dir = "../examples/compose"
		cmd.Env = env
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return string(out), err
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			if out, err := run("down", "-v", "--remove-orphans"); err != nil {
				t.Errorf("docker-compose down: %v\n%s", err, out)
			}
		}
	})
	if out, err := run("up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	// The gateway needs a moment to open its API socket: retry, bounded.
	var conf string
	eventually(t, 60*time.Second, "wireguard create through docker-compose exec", func() bool {
		conf, err = run("exec", "-T", "gateway", "devgate", "wireguard", "create", "personal", "local", "laptop", "stdout")
		return err == nil
	})
	cfg, err := peers.ParseConfig("laptop.conf", []byte(conf))
	if err != nil {
		t.Fatalf("parse the config from wireguard create: %v\n%s", err, conf)
	}
	cfg.Peers[0].Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
	c, err := devclient.New(cfg, t.Logf)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	cli := dockerEngine(t)
	// The replicas were started by compose; devgate stops them when idle.
	eventually(t, 60*time.Second, "both hello replicas stopped by auto-stop", func() bool {
		return len(containersOf(t, cli, project, "hello")) == 2 && countRunning(containersOf(t, cli, project, "hello")) == 0
	})
	resp, body := getRetry(t, c, "http://hello.flycast/")
	if resp.StatusCode != http.StatusOK || !helloFrom.MatchString(body) {
		t.Fatalf("hello.flycast through the compose gateway: %s %q", resp.Status, body)
	}
	if n := countRunning(containersOf(t, cli, project, "hello")); n != 1 {
		t.Errorf("%d hello containers running after one request, want 1 (woken)", n)
	}
	downed = true
	if out, err := run("down", "-v", "--remove-orphans"); err != nil {
		t.Fatalf("docker-compose down: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", "com.docker.compose.project="+project)})
	if err != nil || len(res.Items) != 0 {
		t.Errorf("after down: %d containers of the project left (%v)", len(res.Items), err)
	}
	if _, err := cli.NetworkInspect(ctx, project, client.NetworkInspectOptions{}); err == nil {
		t.Errorf("after down: network %s is left", project)
	}
}

// getRetry is get with a few retries: the first handshake through a freshly
// published UDP port may be lost. Bounded in count.
func getRetry(t *testing.T, c *devclient.Client, url string) (*http.Response, string) {
	t.Helper()
	var last error
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Close = true
		resp, err := c.HTTPClient().Do(req)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			if rerr == nil {
				return resp, string(b)
			}
			err = rerr
		}
		cancel()
		last = err
	}
	t.Fatalf("GET %s: %v", url, last)
	return nil, ""
}
