package machines

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrDriverClosed is returned by Start after Close.
var ErrDriverClosed = errors.New("machine driver is closed")

const (
	// exitBuffer is the capacity of the Exits channel. Each machine's
	// waiter goroutine sends its own Exit and gives up when the driver
	// closes, so a slow reader delays waiters but never blocks them forever
	// and the number of pending sends is bounded by the number of machines.
	exitBuffer = 64

	// defaultKillTimeout applies when a Spec leaves KillTimeout zero; it is
	// fly.toml's default kill_timeout.
	defaultKillTimeout = 5 * time.Second

	// logDrainTimeout bounds how long a machine's exit waits for its output
	// pipe to drain. A descendant that escaped the process group (setsid)
	// can hold the pipe open forever; after this we close our end.
	logDrainTimeout = 2 * time.Second
)

// ProcessConfig configures a ProcessDriver.
type ProcessConfig struct {
	// StateDir holds one pid file per running machine, so that a gateway
	// that died can find and kill leftover processes (CleanupOrphans). It
	// is created (0700) if missing. Required.
	StateDir string
	// Logf receives operational messages; nil discards them.
	Logf func(format string, args ...any)
}

// ProcessDriver runs each machine as a local process in its own process
// group. Its services listen on 127.0.0.1 ports that the driver allocates
// and passes in $PORT; Backend maps internal ports to them.
type ProcessDriver struct {
	cfg      ProcessConfig
	logLimit int64 // bytes per log file before rotation; a knob for tests

	starts chan startReq  // to the starter goroutine (see starter)
	exits  chan Exit      // delivered by waiter goroutines
	done   chan struct{}  // closed by Close after every machine stopped
	wg     sync.WaitGroup // starter and waiters

	mu     sync.Mutex
	procs  map[string]*proc // running (or stopping) machines by ID
	closed bool

	closeOnce sync.Once
}

var _ Driver = (*ProcessDriver)(nil)

// proc is one running machine.
type proc struct {
	spec  Spec
	cmd   *exec.Cmd
	pid   int
	ports map[int]uint16 // internal port -> 127.0.0.1 port
	log   *logWriter     // nil when the spec has no LogPath
	logf  func(format string, args ...any)

	stopping bool // guarded by ProcessDriver.mu; set by Stop

	// sigMu orders signals against reaping: while reaped is false the
	// leader is at least a zombie, so its pid and process group ID cannot
	// be reused and a signal to -pid reaches only this machine.
	sigMu  sync.Mutex
	reaped bool

	exited chan struct{} // closed once the process is reaped
}

type startReq struct {
	spec  Spec
	reply chan error
}

// NewProcessDriver creates the state directory and starts the goroutine that
// launches processes. Call CleanupOrphans before starting machines.
func NewProcessDriver(cfg ProcessConfig) (*ProcessDriver, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("process driver: StateDir is empty; set it to a directory for pid files")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("process driver: create state dir: %w", err)
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	d := &ProcessDriver{
		cfg:      cfg,
		logLimit: defaultLogLimit,
		starts:   make(chan startReq),
		exits:    make(chan Exit, exitBuffer),
		done:     make(chan struct{}),
		procs:    make(map[string]*proc),
	}
	d.wg.Add(1)
	go d.starter()
	return d, nil
}

// Name implements Driver.
func (d *ProcessDriver) Name() string { return "process" }

// Exits implements Driver.
func (d *ProcessDriver) Exits() <-chan Exit { return d.exits }

// Start implements Driver. Starting a machine that is already running is a
// no-op that returns nil (a wake racing another wake is harmless). Starting a
// machine that is being stopped waits for it to end, then starts it anew.
func (d *ProcessDriver) Start(ctx context.Context, spec Spec) error {
	if err := checkID(spec.ID); err != nil {
		return fmt.Errorf("start machine %q: %w", spec.ID, err)
	}
	if len(spec.Command) == 0 {
		return fmt.Errorf("start machine %s: no command; set the machine's command (argv) in its config", spec.ID)
	}
	d.mu.Lock()
	old := d.procs[spec.ID]
	if old != nil && !old.stopping {
		old = nil // running: launch sees it and does nothing
	}
	d.mu.Unlock()
	if old != nil {
		select {
		case <-old.exited:
		case <-ctx.Done():
			return fmt.Errorf("start machine %s: waiting for previous run to stop: %w", spec.ID, ctx.Err())
		}
	}
	req := startReq{spec: spec, reply: make(chan error, 1)}
	select {
	case d.starts <- req:
	case <-ctx.Done():
		return fmt.Errorf("start machine %s: %w", spec.ID, ctx.Err())
	case <-d.done:
		return fmt.Errorf("start machine %s: %w", spec.ID, ErrDriverClosed)
	}
	// The starter always replies; a fork is quick, so no ctx case here.
	return <-req.reply
}

// starter launches every process from one goroutine locked to its OS thread.
// Pdeathsig fires when the *thread* that forked the child exits, not the
// process; Go ends a thread when a goroutine exits while locked to it, so a
// child forked from an arbitrary goroutine could be killed by some unrelated
// LockOSThread user. Holding this thread for the driver's life avoids that.
func (d *ProcessDriver) starter() {
	defer d.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for {
		select {
		case req := <-d.starts:
			req.reply <- d.launch(req.spec)
		case <-d.done:
			return
		}
	}
}

// launch runs on the starter goroutine. It holds mu across the fork so that
// Close either sees the new machine or the machine is never started.
func (d *ProcessDriver) launch(spec Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("start machine %s: %w", spec.ID, ErrDriverClosed)
	}
	if p := d.procs[spec.ID]; p != nil {
		if p.stopping {
			return fmt.Errorf("start machine %s: it is stopping; retry once it has stopped", spec.ID)
		}
		return nil
	}
	p, err := d.spawn(spec)
	if err != nil {
		return fmt.Errorf("start machine %s: %w", spec.ID, err)
	}
	d.procs[spec.ID] = p
	d.wg.Add(1)
	go d.wait(p)
	return nil
}

// spawn allocates ports, opens the log and execs the command.
func (d *ProcessDriver) spawn(spec Spec) (*proc, error) {
	ports, err := allocatePorts(spec.Ports)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(spec.Command[0], spec.Command[1:]...)
	cmd.Env = machineEnv(spec, ports)
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = logDrainTimeout
	p := &proc{spec: spec, cmd: cmd, ports: ports, logf: d.cfg.Logf, exited: make(chan struct{})}
	if spec.LogPath != "" {
		lw, err := openLog(spec.LogPath, d.logLimit, d.cfg.Logf)
		if err != nil {
			return nil, err
		}
		p.log = lw
		// One writer for both, so exec uses a single pipe and goroutine.
		cmd.Stdout, cmd.Stderr = lw, lw
	}
	if err := cmd.Start(); err != nil {
		if p.log != nil {
			p.log.Close()
		}
		return nil, fmt.Errorf("exec %q: %w", spec.Command[0], err)
	}
	p.pid = cmd.Process.Pid
	if err := writePidFile(d.cfg.StateDir, spec.ID, p.pid); err != nil {
		// The machine runs; it just cannot be cleaned up after a crash.
		d.cfg.Logf("machine %s: %v", spec.ID, err)
	}
	d.cfg.Logf("machine %s: started pid %d: %q", spec.ID, p.pid, spec.Command)
	return p, nil
}

// allocatePorts picks a free loopback port for each internal port. The port
// is free when we close our listener; another process could take it before
// the machine binds it, a race every "listen on :0 then hand over" scheme has.
func allocatePorts(internal []int) (map[int]uint16, error) {
	ports := make(map[int]uint16, len(internal))
	for _, ip := range internal {
		if _, ok := ports[ip]; ok {
			continue
		}
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("allocate port for internal port %d: %w", ip, err)
		}
		ports[ip] = uint16(l.Addr().(*net.TCPAddr).Port)
		if err := l.Close(); err != nil {
			return nil, fmt.Errorf("allocate port for internal port %d: %w", ip, err)
		}
	}
	return ports, nil
}

// machineEnv is the gateway's environment, then the variables Fly sets, then
// spec.Env; exec keeps the last value of a duplicated name.
func machineEnv(spec Spec, ports map[int]uint16) []string {
	env := os.Environ()
	if len(spec.Ports) > 0 {
		env = append(env, "PORT="+strconv.Itoa(int(ports[spec.Ports[0]])))
	}
	env = append(env,
		"FLY_APP_NAME="+spec.App,
		"FLY_MACHINE_ID="+spec.ID,
		"FLY_REGION="+spec.Region,
	)
	if spec.PrivateIP.IsValid() {
		env = append(env, "FLY_PRIVATE_IP="+spec.PrivateIP.String())
	}
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic environment
	for _, k := range keys {
		env = append(env, k+"="+spec.Env[k])
	}
	return env
}

// wait owns a machine from start to Exit. It kills what is left of the
// process group while the leader is still a zombie (so the group ID cannot
// have been reused), reaps it, and reports the Exit.
func (d *ProcessDriver) wait(p *proc) {
	defer d.wg.Done()
	werr := waitExited(p.pid)
	p.sigMu.Lock()
	if werr == nil {
		// A machine is its process group: when the main process ends, so
		// do its children, as when a container's init exits.
		if err := killGroup(p.pid, syscall.SIGKILL); err != nil {
			d.cfg.Logf("machine %s: kill leftover children: %v", p.spec.ID, err)
		}
	} else if !errors.Is(werr, errors.ErrUnsupported) {
		d.cfg.Logf("machine %s: wait for exit: %v", p.spec.ID, werr)
	}
	p.reaped = true
	p.sigMu.Unlock()

	werr = p.cmd.Wait()
	if errors.Is(werr, exec.ErrWaitDelay) {
		d.cfg.Logf("machine %s: output still open %v after exit; closed it", p.spec.ID, logDrainTimeout)
	}
	if p.log != nil {
		p.log.Close()
	}
	removePidFile(d.cfg.StateDir, p.spec.ID, d.cfg.Logf)

	d.mu.Lock()
	if d.procs[p.spec.ID] == p {
		delete(d.procs, p.spec.ID)
	}
	stopped := p.stopping
	d.mu.Unlock()
	close(p.exited)

	ex := Exit{ID: p.spec.ID, ExitCode: -1, Stopped: stopped}
	if ps := p.cmd.ProcessState; ps != nil {
		ex.ExitCode = ps.ExitCode()
		if !stopped && !ps.Success() {
			ex.Err = fmt.Errorf("machine %s: %s", p.spec.ID, ps)
		}
	} else if werr != nil && !stopped {
		ex.Err = fmt.Errorf("machine %s: %w", p.spec.ID, werr)
	}
	d.cfg.Logf("machine %s: exited (code %d, stopped %v)", p.spec.ID, ex.ExitCode, stopped)
	// Prefer delivery while the buffer has room, even during Close.
	select {
	case d.exits <- ex:
		return
	default:
	}
	select {
	case d.exits <- ex:
	case <-d.done: // nobody is reading any more; Close is tearing down
	}
}

// signal sends sig to the machine's process group unless it was reaped.
func (p *proc) signal(sig syscall.Signal) {
	p.sigMu.Lock()
	defer p.sigMu.Unlock()
	if p.reaped {
		return
	}
	if err := killGroup(p.pid, sig); err != nil {
		p.logf("machine %s: %v", p.spec.ID, err)
	}
}

// Stop implements Driver. It sends spec.KillSignal (SIGTERM if zero) to the
// machine's process group, waits up to spec.KillTimeout (5s if zero) or until
// ctx ends, then sends SIGKILL. It returns once the process has been reaped,
// so its ports are free. Stopping a machine that is not running returns nil.
func (d *ProcessDriver) Stop(ctx context.Context, id string) error {
	d.mu.Lock()
	p := d.procs[id]
	if p != nil {
		p.stopping = true
	}
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	sig := p.spec.KillSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	timeout := p.spec.KillTimeout
	if timeout <= 0 {
		timeout = defaultKillTimeout
	}
	p.signal(sig)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
		d.cfg.Logf("machine %s: still running %v after %v; killing", id, timeout, sig)
	case <-ctx.Done():
	}
	p.signal(syscall.SIGKILL)
	// SIGKILL cannot be caught; the wait is bounded by the kernel tearing
	// the process down plus logDrainTimeout.
	<-p.exited
	return nil
}

// Destroy implements Driver: a process leaves nothing behind but its log,
// which is kept for the user to read.
func (d *ProcessDriver) Destroy(ctx context.Context, id string) error {
	return d.Stop(ctx, id)
}

// Backend implements Driver. A machine being stopped counts as not running,
// so that the proxy sends no new connections to it.
func (d *ProcessDriver) Backend(id string, internalPort int) (netip.AddrPort, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[id]
	if p == nil || p.stopping {
		return netip.AddrPort{}, fmt.Errorf("backend of machine %s: %w", id, ErrNotRunning)
	}
	port, ok := p.ports[internalPort]
	if !ok {
		if internalPort <= 0 || internalPort > 65535 {
			return netip.AddrPort{}, fmt.Errorf("backend of machine %s: bad port %d", id, internalPort)
		}
		port = uint16(internalPort)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), nil
}

// Close implements Driver: it stops every machine (in parallel, each with
// its own kill timeout), waits for them to be reaped, and closes Exits.
// Exits of machines stopped by Close are delivered if the buffer has room.
func (d *ProcessDriver) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		ids := make([]string, 0, len(d.procs))
		for id := range d.procs {
			ids = append(ids, id)
		}
		d.mu.Unlock()

		var stops sync.WaitGroup
		for _, id := range ids {
			stops.Add(1)
			go func() {
				defer stops.Done()
				if err := d.Stop(context.Background(), id); err != nil {
					d.cfg.Logf("machine %s: stop on close: %v", id, err)
				}
			}()
		}
		stops.Wait()
		close(d.done)
		d.wg.Wait()
		close(d.exits)
	})
	return nil
}
