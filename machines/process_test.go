package machines

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testWait bounds every wait in these tests; it is a deadline against
// hangs, not a speed assertion.
const testWait = 20 * time.Second

type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logBuf) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func newDriver(t *testing.T) (*ProcessDriver, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	d, err := NewProcessDriver(ProcessConfig{StateDir: t.TempDir(), Logf: lb.logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, lb
}

func serveSpec(t testing.TB, id string, env map[string]string) Spec {
	e := map[string]string{childModeEnv: "serve"}
	for k, v := range env {
		e[k] = v
	}
	return Spec{
		ID: id, App: "hello", Region: "dev",
		Command:     childCommand(t),
		Env:         e,
		Ports:       []int{8080, 9090},
		PrivateIP:   netip.MustParseAddr("fdaa:0:1:a7b:1::2"),
		KillTimeout: 5 * time.Second,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	t.Cleanup(cancel)
	return ctx
}

func waitExit(t *testing.T, d *ProcessDriver) Exit {
	t.Helper()
	select {
	case ex, ok := <-d.Exits():
		if !ok {
			t.Fatal("Exits closed")
		}
		return ex
	case <-time.After(testWait):
		t.Fatal("no Exit")
	}
	panic("unreachable")
}

func pidOf(t *testing.T, d *ProcessDriver, id string) int {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[id]
	if p == nil {
		t.Fatalf("machine %s not running", id)
	}
	return p.pid
}

func startReady(t *testing.T, d *ProcessDriver, spec Spec) netip.AddrPort {
	t.Helper()
	ctx := ctxT(t)
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	addr, err := d.Backend(spec.ID, spec.Ports[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitReady(ctx, addr); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestStartEchoAndEnv(t *testing.T) {
	d, _ := newDriver(t)
	spec := serveSpec(t, "0123456789abcd", map[string]string{"EXTRA": "x y"})
	addr := startReady(t, d, spec)
	if !addr.Addr().IsLoopback() || addr.Port() == 8080 {
		t.Errorf("backend %v: want a mapped 127.0.0.1 port", addr)
	}
	if _, err := os.Stat(pidPath(d.cfg.StateDir, spec.ID)); err != nil {
		t.Errorf("pid file while running: %v", err)
	}

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testWait))
	rd := bufio.NewReader(c)
	ask := func(q string) string {
		fmt.Fprintln(c, q)
		s, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("%q: %v", q, err)
		}
		return strings.TrimSuffix(s, "\n")
	}
	for q, want := range map[string]string{
		"hello":              "hello",
		"env PORT":           strconv.Itoa(int(addr.Port())),
		"env FLY_APP_NAME":   "hello",
		"env FLY_MACHINE_ID": spec.ID,
		"env FLY_REGION":     "dev",
		"env FLY_PRIVATE_IP": "fdaa:0:1:a7b:1::2",
		"env EXTRA":          "x y",
	} {
		if got := ask(q); got != want {
			t.Errorf("%q = %q, want %q", q, got, want)
		}
	}

	second, err := d.Backend(spec.ID, 9090)
	if err != nil || second.Port() == addr.Port() || second.Port() == 0 {
		t.Errorf("Backend(9090) = %v, %v: want another mapped port", second, err)
	}
	if b, err := d.Backend(spec.ID, 5000); err != nil || b.String() != "127.0.0.1:5000" {
		t.Errorf("Backend(5000) = %v, %v: want 127.0.0.1:5000", b, err)
	}
	// Starting a running machine is a no-op.
	if err := d.Start(ctxT(t), spec); err != nil {
		t.Errorf("second Start: %v", err)
	}
	if got, _ := d.Backend(spec.ID, 8080); got != addr {
		t.Errorf("second Start changed backend %v -> %v", addr, got)
	}

	if err := d.Stop(ctxT(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	ex := waitExit(t, d)
	if ex.ID != spec.ID || !ex.Stopped || ex.Err != nil {
		t.Errorf("exit = %+v, want stopped without error", ex)
	}
	if _, err := d.Backend(spec.ID, 8080); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Backend after Stop: %v, want ErrNotRunning", err)
	}
	if _, err := os.Stat(pidPath(d.cfg.StateDir, spec.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after stop: %v", err)
	}
	if err := d.Stop(ctxT(t), spec.ID); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	d, lb := newDriver(t)
	spec := serveSpec(t, "ignoreterm", map[string]string{childIgnoreTerm: "1"})
	spec.KillTimeout = 50 * time.Millisecond
	startReady(t, d, spec)
	pid := pidOf(t, d, spec.ID)

	if err := d.Stop(ctxT(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("pid %d alive after Stop returned", pid)
	}
	ex := waitExit(t, d)
	if !ex.Stopped || ex.Err != nil || ex.ExitCode != -1 {
		t.Errorf("exit = %+v, want stopped by a signal", ex)
	}
	if !lb.contains("killing") {
		t.Errorf("no escalation logged: %q", lb.lines)
	}
}

func TestExitCode(t *testing.T) {
	d, _ := newDriver(t)
	spec := serveSpec(t, "exits3", map[string]string{childExitAfter: "20", childExitCode: "3"})
	if err := d.Start(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	ex := waitExit(t, d)
	if ex.ID != spec.ID || ex.ExitCode != 3 || ex.Err == nil || ex.Stopped {
		t.Errorf("exit = %+v, want code 3 with error", ex)
	}
	if _, err := d.Backend(spec.ID, 8080); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Backend after exit: %v", err)
	}
}

func TestStartErrors(t *testing.T) {
	d, _ := newDriver(t)
	for name, spec := range map[string]Spec{
		"missing command": {ID: "m1", Command: []string{filepath.Join(t.TempDir(), "no-such-binary")}},
		"empty command":   {ID: "m2"},
		"bad id":          {ID: "../etc", Command: childCommand(t)},
	} {
		if err := d.Start(ctxT(t), spec); err == nil {
			t.Errorf("%s: Start succeeded", name)
		}
		if _, err := d.Backend(spec.ID, 80); !errors.Is(err, ErrNotRunning) {
			t.Errorf("%s: Backend: %v", name, err)
		}
	}
}

func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	d, err := NewProcessDriver(ProcessConfig{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for i := range 3 {
		spec := serveSpec(t, fmt.Sprintf("m%d", i), nil)
		if i == 0 {
			spec.Env[childIgnoreTerm] = "1"
			spec.KillTimeout = 50 * time.Millisecond
		}
		startReady(t, d, spec)
		pids = append(pids, pidOf(t, d, spec.ID))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d alive after Close", pid)
		}
	}
	n := 0
	for ex := range d.Exits() { // closed by Close, so this ends
		if !ex.Stopped {
			t.Errorf("exit %+v not marked stopped", ex)
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d exits, want 3", n)
	}
	if err := d.Start(ctxT(t), serveSpec(t, "late", nil)); !errors.Is(err, ErrDriverClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkGoroutines(t, before)
}

// checkGoroutines waits (bounded) for the goroutine count to return to
// before; exec and net goroutines end shortly after their owners.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines, had %d:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestCleanupOrphans(t *testing.T) {
	dir := t.TempDir()
	// A leftover machine from a "previous gateway".
	orphan := exec.Command(childCommand(t)[0])
	orphan.Env = append(os.Environ(), childModeEnv+"=sleep")
	orphan.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	defer orphan.Process.Kill()
	if err := writePidFile(dir, "orphan1", orphan.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// This test process, recorded with a wrong start time: a reused pid.
	_, start, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	reused := fmt.Sprintf("%d %d\n", os.Getpid(), start+1)
	if err := os.WriteFile(pidPath(dir, "reused"), []byte(reused), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pidPath(dir, "garbage"), []byte("not a pid"), 0o600); err != nil {
		t.Fatal(err)
	}

	d, err := NewProcessDriver(ProcessConfig{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cleaned, err := d.CleanupOrphans()
	if err != nil {
		t.Fatal(err)
	}
	if len(cleaned) != 1 || cleaned[0] != "orphan1" {
		t.Errorf("cleaned %q, want [orphan1]", cleaned)
	}
	err = orphan.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("orphan ended with %v, want SIGKILL", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	if len(left) != 0 {
		t.Errorf("pid files left: %q", left)
	}
	// Reaching here means this process survived; make it explicit.
	if !alive(os.Getpid()) {
		t.Error("test process reported dead")
	}
}

// TestCleanupOrphanChildren covers the usual crash: Pdeathsig killed the
// machine's main process with the gateway, but a child it forked lives on.
func TestCleanupOrphanChildren(t *testing.T) {
	dir := t.TempDir()
	leader := exec.Command(childCommand(t)[0])
	leader.Env = append(os.Environ(), childModeEnv+"=spawn", "FLY_MACHINE_ID=orphan2")
	leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := leader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	defer leader.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	gpid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("child said %q", line)
	}
	defer syscall.Kill(gpid, syscall.SIGKILL)
	if err := writePidFile(dir, "orphan2", leader.Process.Pid); err != nil {
		t.Fatal(err)
	}
	leader.Process.Kill()
	leader.Wait()

	d, err := NewProcessDriver(ProcessConfig{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cleaned, err := d.CleanupOrphans()
	if err != nil {
		t.Fatal(err)
	}
	if len(cleaned) != 1 || cleaned[0] != "orphan2" {
		t.Errorf("cleaned %q, want [orphan2]", cleaned)
	}
	// The grandchild is not ours to reap; wait (bounded) for it to die.
	deadline := time.Now().Add(testWait)
	for alive(gpid) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(gpid) {
		t.Errorf("orphaned child %d still alive", gpid)
	}
}

func TestLogRotation(t *testing.T) {
	d, _ := newDriver(t)
	const limit = 1000
	d.logLimit = limit
	spec := serveSpec(t, "chatty", map[string]string{
		childSpamLines: "25", childExitAfter: "0", childExitCode: "0",
	})
	spec.LogPath = filepath.Join(t.TempDir(), "chatty.log")
	if err := d.Start(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	if ex := waitExit(t, d); ex.Err != nil {
		t.Fatalf("exit %+v", ex)
	}
	for _, p := range []string{spec.LogPath, spec.LogPath + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() == 0 || st.Size() > limit {
			t.Errorf("%s: %d bytes, want 1..%d", p, st.Size(), limit)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	b, err := os.ReadFile(spec.LogPath + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Trim(string(b), "x\n") != "" {
		t.Errorf("rotated log holds unexpected output %q", b)
	}
}

func BenchmarkStartReady(b *testing.B) {
	d, err := NewProcessDriver(ProcessConfig{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	spec := serveSpec(b, "bench", nil)
	spec.Ports = spec.Ports[:1]
	for b.Loop() {
		if err := d.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
		addr, err := d.Backend(spec.ID, 8080)
		if err != nil {
			b.Fatal(err)
		}
		if err := WaitReady(ctx, addr); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Stop(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		<-d.Exits()
		b.StartTimer()
	}
}
