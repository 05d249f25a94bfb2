package machines

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// dockerHelloImage is built by images/build.sh (FROM scratch: no pull).
const dockerHelloImage = "devgate-hello:local"

var dockerBuild struct {
	once sync.Once
	err  error
}

// newDockerTest returns a driver on a network of its own, or skips when no
// engine answers. Every container on that network, and the network, are
// removed when the test ends.
func newDockerTest(t *testing.T) (*DockerDriver, *client.Client) {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	netName := "devgate-mtest-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := NewDockerDriver(ctx, DockerConfig{Network: netName, Logf: t.Logf})
	if errors.Is(err, ErrNoEngine) {
		t.Skipf("no Docker engine answers (%v): skipping the Docker driver test", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dockerBuild.once.Do(func() {
		if out, err := exec.Command("../images/build.sh").CombinedOutput(); err != nil {
			dockerBuild.err = fmt.Errorf("images/build.sh: %v\n%s", err, out)
		}
	})
	if dockerBuild.err != nil {
		d.Close()
		t.Fatal(dockerBuild.err)
	}
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("network", netName)})
		if err != nil {
			t.Errorf("clean up: %v", err)
		}
		for _, c := range res.Items {
			if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
				t.Errorf("clean up container %.12s: %v", c.ID, err)
			}
		}
		cli.NetworkRemove(ctx, netName, client.NetworkRemoveOptions{})
		cli.Close()
	})
	return d, cli
}

func nextExit(t *testing.T, d *DockerDriver) Exit {
	t.Helper()
	select {
	case e := <-d.Exits():
		return e
	case <-time.After(30 * time.Second):
		t.Fatal("no Exit within 30s")
		return Exit{}
	}
}

// TestDockerDriver: start, env, backend on the internal port, stop with
// the kill signal, an exit at start, and destroy.
func TestDockerDriver(t *testing.T) {
	d, cli := newDockerTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := Spec{ID: "00000000000a01", App: "hello", Region: "local", Image: dockerHelloImage, Ports: []int{80},
		Env: map[string]string{"GREETING": "hi"}, KillSignal: syscall.SIGTERM, KillTimeout: 5 * time.Second}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	ap, err := d.Backend(spec.ID, 80)
	if err != nil {
		t.Fatal(err)
	}
	if ap.Port() != 80 || !ap.Addr().IsValid() {
		t.Fatalf("backend %s, want the bridge address and port 80", ap)
	}
	if err := WaitReady(ctx, ap); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + ap.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Hello from") {
		t.Errorf("backend answered %q", body)
	}
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelMachine+"="+spec.ID)})
	if err != nil || len(res.Items) != 1 {
		t.Fatalf("containers labeled with the machine: %d (%v), want 1", len(res.Items), err)
	}
	ins, err := cli.ContainerInspect(ctx, res.Items[0].ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(ins.Container.Config.Env, " ")
	for _, want := range []string{"PORT=80", "FLY_APP_NAME=hello", "FLY_MACHINE_ID=" + spec.ID, "FLY_REGION=local", "GREETING=hi"} {
		if !strings.Contains(env, want) {
			t.Errorf("container env lacks %s: %s", want, env)
		}
	}

	if err := d.Stop(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if e := nextExit(t, d); e.ID != spec.ID || !e.Stopped || e.Err != nil {
		t.Errorf("exit after Stop = %+v, want Stopped and no error", e)
	}
	if _, err := d.Backend(spec.ID, 80); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Backend of a stopped machine: %v, want ErrNotRunning", err)
	}
	if err := d.Stop(ctx, spec.ID); err != nil {
		t.Errorf("Stop of a stopped machine: %v, want nil", err)
	}
	// A second start reuses the container.
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if res, _ := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelMachine+"="+spec.ID)}); len(res.Items) != 1 {
		t.Errorf("%d containers after a restart of the machine, want 1", len(res.Items))
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	nextExit(t, d)
	if res, _ := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelMachine+"="+spec.ID)}); len(res.Items) != 0 {
		t.Errorf("%d containers after Destroy, want 0", len(res.Items))
	}

	// hello refuses a positional argument: the container exits with code 2.
	bad := spec
	bad.ID, bad.Command = "00000000000a02", []string{"no-such-argument"}
	if err := d.Start(ctx, bad); err == nil {
		e := nextExit(t, d)
		if e.ID != bad.ID || e.Stopped || e.Err == nil || e.ExitCode != 2 {
			t.Errorf("exit of a failing container = %+v, want code 2 with an error", e)
		}
	} else if !strings.Contains(err.Error(), "exited") {
		t.Errorf("start of a failing container: %v", err)
	}

	missing := spec
	missing.ID, missing.Image = "00000000000a03", "devgate-no-such-image:local"
	if err := d.Start(ctx, missing); err == nil || !strings.Contains(err.Error(), "never pulls") {
		t.Errorf("start with a missing image: %v, want an error saying to build it", err)
	}
}

// TestDockerDriverCloseLeaksNothing: Close ends the event watcher and the
// client's connections; it is idempotent and closes Exits.
func TestDockerDriverCloseLeaksNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := NewDockerDriver(ctx, DockerConfig{Network: "devgate-mtest-unused"})
	if errors.Is(err, ErrNoEngine) {
		t.Skipf("no Docker engine answers (%v): skipping the Docker driver test", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := <-d.Exits(); ok {
		t.Error("Exits delivered after Close")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before", n, before)
	}
}
