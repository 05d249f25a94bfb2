package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/store"
)

// Environment variables that make this test binary play a part other than
// the test runner. They are read in init, before TestMain, and unset at once
// so the processes this one starts do not inherit the part.
const (
	// envServe makes the binary a gateway on the given data dir, serving
	// until killed: the crash-restart loop SIGKILLs it.
	envServe = "DEVGATE_RELIABILITY_SERVE"
	// envServePort is the WireGuard port that gateway listens on.
	envServePort = "DEVGATE_RELIABILITY_PORT"
	// envMachine makes a machine ("devgate hello") misbehave: "hang" never
	// listens, "crash" listens and dies in the middle of its first request.
	// It reaches the machine through fly.toml's [env].
	envMachine = "DEVGATE_TEST_MACHINE"
)

func init() {
	if dir := os.Getenv(envServe); dir != "" {
		os.Unsetenv(envServe)
		os.Exit(serveUntilKilled(dir, os.Getenv(envServePort)))
	}
	switch os.Getenv(envMachine) {
	case "hang":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		<-ctx.Done()
		os.Exit(0)
	case "crash":
		os.Exit(crashMidRequest(os.Getenv("PORT")))
	case "slow":
		os.Exit(slowServer(os.Getenv("PORT")))
	}
}

// serveUntilKilled runs a gateway as `devgate serve` would, until a signal.
func serveUntilKilled(dir, port string) int {
	var p int
	fmt.Sscan(port, &p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	g, err := Start(ctx, Config{DataDir: dir, ListenPort: p, Endpoint: "127.0.0.1:" + port, UpstreamDNS: []string{"127.0.0.1:1"}, IdleTimeout: time.Hour})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-sig.Done():
	case err := <-g.Done():
		fmt.Fprintln(os.Stderr, "gateway:", err)
	}
	g.Close()
	return 0
}

// crashMidRequest accepts connections on port, and exits as soon as it has
// read the first request's headers, without answering.
func crashMidRequest(port string) int {
	l, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		go func() {
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err == nil {
				os.Exit(2) // mid-request: the proxy has sent it and waits
			}
			c.Close()
		}()
	}
}

// maxSlowSleep bounds the "slow" machine's ?sleep=.
const maxSlowSleep = 30 * time.Second

// slowServer answers every request after sleeping ?sleep= (a duration).
func slowServer(port string) int {
	err := http.ListenAndServe(":"+port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("sleep"))
		time.Sleep(min(d, maxSlowSleep))
		fmt.Fprintln(w, "slept", d)
	}))
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// misbehaving is a fly.toml for app name whose machines behave as mode says.
func misbehaving(name, mode string) string {
	return string(helloConfig(name)) + "\n[env]\n  " + envMachine + " = '" + mode + "'\n"
}

// TestMachineFaults: a machine that never becomes ready, one that crashes in
// the middle of a request, and one that exits at start. Each gets a clear
// error to the client and a recorded reason, and when a healthy machine
// exists the next request is served by it.
func TestMachineFaults(t *testing.T) {
	const wake = 2 * time.Second
	h := newHarnessWith(t, func(c *Config) { c.WakeTimeout = wake })
	ctx := h.ctx()
	c := h.dial(h.peer("personal", "laptop"))

	deployAs := func(app, cfg string) {
		t.Helper()
		if _, err := h.api.CreateApp(ctx, api.CreateAppRequest{Name: app, Flycast: true, Config: []byte(cfg)}); err != nil {
			t.Fatal(err)
		}
		// Deploy starts the machines; a misbehaving one fails, and that is
		// what this test is about.
		if _, err := h.api.Deploy(ctx, app, api.DeployRequest{Config: []byte(cfg)}); err != nil {
			t.Logf("deploy %s: %v", app, err)
		}
	}

	t.Run("never ready", func(t *testing.T) {
		deployAs("sleepy", misbehaving("sleepy", "hang"))
		resp, body := get(t, c, "http://sleepy.flycast/")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "sleepy") {
			t.Errorf("never-ready app: %s %q; want 503 naming the app", resp.Status, body)
		}
		for _, m := range h.machines("sleepy") {
			if m.State != store.MachineFailed || !strings.Contains(m.Reason, "did not accept") {
				t.Errorf("machine %s: state %s reason %q; want failed, 'did not accept connections'", m.ID, m.State, m.Reason)
			}
		}
		t.Logf("client saw: %s", strings.TrimSpace(body))
	})

	t.Run("exits at start", func(t *testing.T) {
		deployAs("broken", strings.Replace(string(helloConfig("broken")), "devgate hello", "devgate fail", 1))
		resp, body := get(t, c, "http://broken.flycast/")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "broken") {
			t.Errorf("app exiting at start: %s %q; want 503 naming the app", resp.Status, body)
		}
		for _, m := range h.machines("broken") {
			if m.State != store.MachineFailed || m.Reason == "" {
				t.Errorf("machine %s: state %s reason %q; want failed with a reason", m.ID, m.State, m.Reason)
			}
		}
		t.Logf("client saw: %s", strings.TrimSpace(body))
	})

	t.Run("crash mid-request, healthy machine next", func(t *testing.T) {
		// One app, two machines: the first crashes in the middle of a
		// request; then a healthy machine is added, and it serves.
		deployAs("flaky", misbehaving("flaky", "crash"))
		resp, body := get(t, c, "http://flaky.flycast/")
		if resp.StatusCode < 500 {
			t.Errorf("request to a machine that crashed mid-request: %s %q; want a 5xx", resp.Status, body)
		}
		t.Logf("client saw: %s %s", resp.Status, strings.TrimSpace(body))
		eventually(t, 20*time.Second, "a crashed machine recorded with a reason", func() bool {
			for _, m := range h.machines("flaky") {
				if (m.State == store.MachineFailed || m.State == store.MachineStopped) && m.Reason != "" {
					t.Logf("machine %s: %s, %q", m.ID, m.State, m.Reason)
					return true
				}
			}
			return false
		})
		// Redeploy with a healthy command: the next request is served.
		if _, err := h.api.Deploy(ctx, "flaky", api.DeployRequest{Config: helloConfig("flaky")}); err != nil {
			t.Fatalf("redeploy healthy: %v", err)
		}
		if resp, body := get(t, c, "http://flaky.flycast/"); resp.StatusCode != 200 {
			t.Errorf("after a healthy deploy: %s %q", resp.Status, body)
		}
	})

	t.Run("one bad machine, one healthy", func(t *testing.T) {
		// A healthy app gets an extra machine whose process is killed: the
		// requests after that are all served by the healthy one.
		h.launch("mixed", "")
		ms := h.machines("mixed")
		if len(ms) < 2 {
			t.Fatalf("mixed has %d machines", len(ms))
		}
		if err := h.api.StopMachine(ctx, ms[0].ID); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if resp, body := get(t, c, "http://mixed.flycast/"); resp.StatusCode != 200 || !strings.Contains(body, "Hello from") {
				t.Fatalf("request %d with one machine stopped: %s", i, resp.Status)
			}
		}
	})
}
