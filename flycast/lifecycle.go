package flycast

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/store"
)

// persistTimeout bounds one state write to the store.
const persistTimeout = 10 * time.Second

// startWakeLocked begins starting ms on a goroutine owned by the proxy.
// Everyone who needs ms waits on the returned op.
func (p *Proxy) startWakeLocked(a *App, ms *machineState) *wakeOp {
	w := &wakeOp{done: make(chan struct{})}
	ms.wake = w
	// exited exists before Start so that an instant crash is not missed.
	ms.exited = make(chan struct{})
	ms.exitErr = nil
	prevStop := ms.stopDone
	exited := ms.exited
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.runWake(a, ms, w, prevStop, exited)
	}()
	return w
}

func (p *Proxy) runWake(a *App, ms *machineState, w *wakeOp, prevStop, exited chan struct{}) {
	begin := time.Now()
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.WakeTimeout)
	defer cancel()
	var err error
	if prevStop != nil {
		select {
		case <-prevStop:
		case <-ctx.Done():
			err = fmt.Errorf("wait for the previous stop: %w", ctx.Err())
		}
	}
	if err == nil {
		err = p.bootMachine(ctx, a, ms, exited)
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	p.met.wakes.WithLabelValues(a.Name, result).Inc()
	p.met.wakeSeconds.WithLabelValues(a.Name).Observe(time.Since(begin).Seconds())

	p.mu.Lock()
	ms.wake = nil
	w.err = err
	close(w.done)
	if err == nil {
		ms.touch()
		p.serveQueueLocked(a.Name)
	}
	p.mu.Unlock()
}

// bootMachine starts ms and waits until its primary port accepts, persisting
// starting, then started or failed.
func (p *Proxy) bootMachine(ctx context.Context, a *App, ms *machineState, exited chan struct{}) error {
	p.mu.Lock()
	rec := ms.rec
	p.mu.Unlock()
	id := rec.ID
	// "starting" is written while the machine starts, not before: the disk
	// sync would otherwise add to every cold request. Every later write
	// waits for it, so the store never sees the states out of order.
	startingDone := make(chan struct{})
	close(startingDone) // until the write below is under way
	fail := func(reason string, cause error) error {
		<-startingDone
		p.persist(ms, id, func(m *store.Machine) {
			m.State = store.MachineFailed
			m.Reason = reason
		})
		p.cfg.Logf("flycast: app %s: machine %s failed to start: %s", a.Name, id, reason)
		return &wakeError{app: a.Name, id: id, reason: reason, log: p.spec(a, rec).LogPath, cause: cause}
	}
	drv, err := p.driverOf(rec)
	if err != nil {
		return fail(err.Error(), err)
	}
	startingDone = make(chan struct{})
	go func() {
		defer close(startingDone)
		p.persist(ms, id, func(m *store.Machine) {
			m.State = store.MachineStarting
			m.Reason = ""
			m.ExitCode = 0
		})
	}()
	spec := p.spec(a, rec)
	if err := drv.Start(ctx, spec); err != nil {
		return fail("start: "+err.Error(), err)
	}
	if len(spec.Ports) > 0 {
		addr, err := drv.Backend(id, spec.Ports[0])
		if err == nil {
			// Readiness is abandoned as soon as the driver reports an exit.
			rctx, rcancel := context.WithCancel(ctx)
			go func() {
				select {
				case <-exited:
					rcancel()
				case <-rctx.Done():
				}
			}()
			err = waitReady(rctx, addr)
			rcancel()
		}
		if err != nil {
			reason := fmt.Sprintf("port %d did not accept connections: %v", spec.Ports[0], err)
			select {
			case <-exited:
				p.mu.Lock()
				cause := ms.exitErr
				p.mu.Unlock()
				reason = fmt.Sprintf("exited while starting: %v", cause)
				err = cause
			default:
				// Still running but not listening: stop it, or it would
				// hold resources while the store says failed.
				sctx, scancel := context.WithTimeout(context.Background(), p.cfg.WakeTimeout)
				if serr := drv.Stop(sctx, id); serr != nil {
					p.cfg.Logf("flycast: stop machine %s after failed wake: %v", id, serr)
				}
				scancel()
			}
			return fail(reason, err)
		}
	}
	<-startingDone
	p.persist(ms, id, func(m *store.Machine) {
		m.State = store.MachineStarted
		m.Reason = ""
	})
	return nil
}

// wakeError is a failed wake, as the client sees it.
type wakeError struct {
	app, id, reason, log string
	cause                error
}

func (e *wakeError) Error() string {
	hint := "its log"
	if e.log != "" {
		hint = e.log
	}
	return fmt.Sprintf("app %s: machine %s failed to start: %s; see %s. The next connection tries another machine",
		e.app, e.id, e.reason, hint)
}

func (e *wakeError) Unwrap() []error { return []error{ErrWakeFailed, e.cause} }

// spec builds the machines.Spec for a machine of app a.
func (p *Proxy) spec(a *App, rec store.Machine) machines.Spec {
	s := machines.Spec{
		ID:          rec.ID,
		App:         rec.App,
		Region:      rec.Region,
		Command:     a.Machine.Command,
		Image:       a.Machine.Image,
		Env:         a.Machine.Env,
		PrivateIP:   rec.Address,
		KillSignal:  a.Machine.KillSignal,
		KillTimeout: a.Machine.KillTimeout,
	}
	if len(s.Command) == 0 && s.Image == "" {
		s.Command, s.Image = rec.Command, rec.Image
	}
	seen := map[int]bool{}
	for _, svc := range a.Services {
		if svc.InternalPort > 0 && !seen[svc.InternalPort] {
			seen[svc.InternalPort] = true
			s.Ports = append(s.Ports, svc.InternalPort)
		}
	}
	if p.cfg.LogDir != "" {
		s.LogPath = filepath.Join(p.cfg.LogDir, rec.ID+".log")
	}
	return s
}

// persist writes a state transition and makes it the local state. When the
// store fails the transition still applies locally: the data plane must
// follow what the machine really does.
func (p *Proxy) persist(ms *machineState, id string, fn func(*store.Machine)) {
	ctx, cancel := context.WithTimeout(context.Background(), persistTimeout)
	defer cancel()
	m, err := p.cfg.Store.UpdateMachine(ctx, id, func(m *store.Machine) error {
		fn(m)
		m.UpdatedAt = time.Now()
		return nil
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.cfg.Logf("flycast: persist machine %s: %v", id, err)
		m = ms.rec
		fn(&m)
		m.UpdatedAt = time.Now()
	}
	ms.setState(m)
}

// machineLocked returns machine id for a user's verb ("start", "stop"):
// ErrClosed once the proxy is closed, ErrUnknownMachine (wrapped) if the
// current snapshot has no such machine. p.mu must be held.
func (p *Proxy) machineLocked(verb, id string) (*machineState, error) {
	if p.closed {
		return nil, ErrClosed
	}
	ms := p.machines[id]
	if ms == nil {
		return nil, fmt.Errorf("%s machine %s: %w", verb, id, ErrUnknownMachine)
	}
	return ms, nil
}

// StartMachine starts a machine through the same path as a wake and waits
// until it accepts connections, or ctx ends. Starting a started machine is a
// no-op.
func (p *Proxy) StartMachine(ctx context.Context, id string) error {
	p.mu.Lock()
	ms, err := p.machineLocked("start", id)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if ms.isStarted() {
		p.mu.Unlock()
		return nil
	}
	w := ms.wake
	if w == nil {
		a := p.apps[ms.rec.App]
		if a == nil {
			a = &App{Name: ms.rec.App}
		}
		w = p.startWakeLocked(a, ms)
	}
	p.mu.Unlock()
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return fmt.Errorf("start machine %s: %w", id, ctx.Err())
	}
}

// StopMachine stops a machine through the same path as auto-stop. A wake
// in progress is waited for first. Stopping a stopped machine is a no-op.
func (p *Proxy) StopMachine(ctx context.Context, id string) error {
	for attempt := 0; attempt < maxAcquireAttempts; attempt++ {
		p.mu.Lock()
		ms, err := p.machineLocked("stop", id)
		if err != nil {
			p.mu.Unlock()
			return err
		}
		wait := ms.stopDone
		if ms.wake != nil {
			wait = ms.wake.done
		}
		if wait != nil {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return fmt.Errorf("stop machine %s: %w", id, ctx.Err())
			}
		}
		if !ms.isStarted() && ms.rec.State != store.MachineStarting {
			p.mu.Unlock()
			return nil
		}
		done := make(chan struct{})
		ms.stopDone = done
		ms.setStartedFlag()
		p.mu.Unlock()
		return p.runStop(ms, id, done, "stopped by user")
	}
	return fmt.Errorf("stop machine %s: it kept being started again; try again", id)
}

// runStop stops a machine marked stopping (stopDone set by the caller).
func (p *Proxy) runStop(ms *machineState, id string, done chan struct{}, reason string) error {
	p.mu.Lock()
	rec := ms.rec
	p.mu.Unlock()
	p.persist(ms, id, func(m *store.Machine) { m.State = store.MachineStopping })
	var err error
	drv, derr := p.driverOf(rec)
	if derr != nil {
		err = derr
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.WakeTimeout)
		err = drv.Stop(ctx, id)
		cancel()
	}
	p.mu.Lock()
	ms.closeConnsLocked()
	p.mu.Unlock()
	if err != nil && !errors.Is(err, machines.ErrNotRunning) {
		p.persist(ms, id, func(m *store.Machine) {
			m.State = store.MachineFailed
			m.Reason = "stop: " + err.Error()
		})
		err = fmt.Errorf("stop machine %s: %w", id, err)
	} else {
		err = nil
		p.persist(ms, id, func(m *store.Machine) {
			m.State = store.MachineStopped
			m.Reason = reason
			m.ExitCode = 0
		})
	}
	p.mu.Lock()
	ms.stopDone = nil
	ms.setStartedFlag()
	close(done)
	p.mu.Unlock()
	p.transport.CloseIdleConnections()
	return err
}

func (p *Proxy) consumeExits(name string, d machines.Driver) {
	ch := d.Exits()
	for {
		select {
		case <-p.ctx.Done():
			return
		case e, ok := <-ch:
			if !ok {
				return
			}
			p.handleExit(e)
		}
	}
}

// handleExit applies a driver's Exit: open splices to the machine end, and
// unless a wake or a stop owns the machine's state, it becomes stopped or
// failed.
//
// Exits arrive asynchronously: the Exit of a process we stopped may be
// read after the machine was started again. Such a stale Exit must not mark
// the new process stopped, so an Exit is applied only when the driver
// confirms the machine is not running now.
func (p *Proxy) handleExit(e machines.Exit) {
	p.mu.Lock()
	ms := p.machines[e.ID]
	if ms == nil {
		p.mu.Unlock()
		return
	}
	if !e.Stopped && ms.exited != nil {
		// A crash: the wake waiting for readiness gives up at once.
		ms.exitErr = exitError(e)
		close(ms.exited)
		ms.exited = nil
	}
	// A wake or a stop in progress owns the state; a Stopped exit then is
	// our own stop's (or an earlier one's).
	if ms.wake != nil || ms.stopDone != nil || ms.rec.State != store.MachineStarted {
		p.mu.Unlock()
		return
	}
	rec := ms.rec
	port := 1
	if a := p.apps[rec.App]; a != nil && len(a.Services) > 0 && a.Services[0].InternalPort > 0 {
		port = a.Services[0].InternalPort
	}
	p.mu.Unlock()
	if drv, err := p.driverOf(rec); err == nil {
		if _, err := drv.Backend(e.ID, port); !errors.Is(err, machines.ErrNotRunning) {
			return // stale: the machine runs again
		}
	}
	p.mu.Lock()
	if ms.wake != nil || ms.stopDone != nil || ms.rec.State != store.MachineStarted {
		p.mu.Unlock()
		return
	}
	ms.closeConnsLocked()
	p.mu.Unlock()
	p.transport.CloseIdleConnections()
	if e.Stopped {
		p.persist(ms, e.ID, func(m *store.Machine) {
			m.State = store.MachineStopped
			m.Reason = "stopped"
		})
		return
	}
	reason := exitError(e).Error()
	p.cfg.Logf("flycast: machine %s: %s", e.ID, reason)
	p.persist(ms, e.ID, func(m *store.Machine) {
		m.State = store.MachineFailed
		m.Reason = reason
		m.ExitCode = e.ExitCode
	})
}

func exitError(e machines.Exit) error {
	if e.Err != nil {
		return fmt.Errorf("exited with code %d: %w", e.ExitCode, e.Err)
	}
	return fmt.Errorf("exited with code %d", e.ExitCode)
}
