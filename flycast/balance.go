package flycast

import (
	"context"
	"fmt"
	"time"

	"github.com/devgate/devgate/store"
)

// maxAcquireAttempts bounds how often one connection re-runs the balancer
// after a wake it waited for succeeded but the machine was taken or stopped
// again before it got a slot.
const maxAcquireAttempts = 4

// pick returns the best started machine below the service's hard limit:
// machines under soft_limit before those over it, then machines in region,
// then the least loaded; ties rotate from rr so equal machines share work.
// allSoft reports whether every started machine is at or over soft_limit
// (or at hard), anyStarted whether any machine is started.
func pick(list []*machineState, c Concurrency, region string, rr int) (best *machineState, allSoft, anyStarted bool) {
	n := len(list)
	if n == 0 {
		return nil, false, false
	}
	allSoft = true
	bestKey := [3]int{}
	start := rr % n
	if start < 0 {
		start += n
	}
	for i := 0; i < n; i++ {
		ms := list[(start+i)%n]
		if !ms.isStarted() {
			continue
		}
		anyStarted = true
		over := 0
		if c.Soft > 0 && ms.load >= c.Soft {
			over = 1
		}
		if over == 0 {
			allSoft = false
		}
		if c.Hard > 0 && ms.load >= c.Hard {
			continue
		}
		away := 0
		if region != "" && ms.rec.Region != region {
			away = 1
		}
		key := [3]int{over, away, ms.load}
		if best == nil || less(key, bestKey) {
			best, bestKey = ms, key
		}
	}
	return best, allSoft && anyStarted, anyStarted
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// pickWakeable returns the machine to start: stopped or created machines
// first (in region first), then failed ones, least recently failed first, so
// that after a failed wake the next connection tries another machine.
// Machines left mid-transition by a restart come next, and machines we are
// stopping last: their wake waits for the stop.
func pickWakeable(list []*machineState, region string) *machineState {
	var best *machineState
	bestRank := 0
	for _, ms := range list {
		if ms.wake != nil {
			continue
		}
		rank := 0
		switch {
		case ms.stopDone != nil:
			rank = 7
		case ms.rec.State == store.MachineStopped || ms.rec.State == store.MachineCreated:
			rank = 1
		case ms.rec.State == store.MachineFailed:
			rank = 3
		case ms.rec.State == store.MachineStarting || ms.rec.State == store.MachineStopping:
			// Recorded mid-transition with no wake or stop of ours in
			// progress: a gateway restart interrupted it. Start afresh.
			rank = 5
		default:
			continue
		}
		if region != "" && ms.rec.Region != region {
			rank++
		}
		if best == nil || rank < bestRank ||
			(rank == bestRank && rank >= 3 && ms.rec.UpdatedAt.Before(best.rec.UpdatedAt)) {
			best, bestRank = ms, rank
		}
	}
	return best
}

func wakeInProgress(list []*machineState) *wakeOp {
	for _, ms := range list {
		if ms.wake != nil {
			return ms.wake
		}
	}
	return nil
}

// acquire returns a started machine of app a with one unit of load counted
// for the caller, who must call release. It wakes a machine when none is
// started, and queues when every machine is at its hard limit.
func (p *Proxy) acquire(ctx context.Context, a *App, svc *Service) (*machineState, error) {
	for attempt := 0; attempt < maxAcquireAttempts; attempt++ {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		list := p.byApp[a.Name]
		as := p.appStateLocked(a.Name)
		best, allSoft, anyStarted := pick(list, svc.Concurrency, p.cfg.Region, as.rr)
		as.rr++
		if best != nil {
			best.load++
			best.touch()
			if allSoft && a.AutoStart {
				// Capacity steps up while this connection is served by an
				// existing machine.
				p.wakeForCapacityLocked(a, list)
			}
			p.mu.Unlock()
			return best, nil
		}
		if anyStarted {
			if a.AutoStart {
				p.wakeForCapacityLocked(a, list)
			}
			if len(as.queue) >= p.cfg.MaxQueue {
				p.mu.Unlock()
				return nil, fmt.Errorf("app %s: %w (%d waiting); raise hard_limit or add machines", a.Name, ErrQueueFull, p.cfg.MaxQueue)
			}
			w := &waiter{svc: svc, ch: make(chan *machineState, 1)}
			as.queue = append(as.queue, w)
			p.met.queueDepth.WithLabelValues(a.Name).Set(float64(len(as.queue)))
			p.mu.Unlock()
			return p.waitQueue(ctx, a.Name, w)
		}
		w := wakeInProgress(list)
		if w == nil {
			if !a.AutoStart {
				p.mu.Unlock()
				return nil, fmt.Errorf("app %s has no started machines and auto_start_machines is off: %w; run `devgate machine start`", a.Name, ErrAutoStartOff)
			}
			ms := pickWakeable(list, p.cfg.Region)
			if ms == nil {
				p.mu.Unlock()
				return nil, fmt.Errorf("app %s: %w; create one with `devgate machine run` or `devgate deploy`", a.Name, ErrNoMachines)
			}
			w = p.startWakeLocked(a, ms)
		}
		p.mu.Unlock()
		select {
		case <-w.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if w.err != nil {
			return nil, w.err
		}
	}
	return nil, fmt.Errorf("app %s: machines kept stopping while this connection waited; try again", a.Name)
}

// wakeForCapacityLocked starts one more machine when no wake is already in
// progress for the app.
func (p *Proxy) wakeForCapacityLocked(a *App, list []*machineState) {
	if wakeInProgress(list) != nil {
		return
	}
	if ms := pickWakeable(list, p.cfg.Region); ms != nil {
		p.startWakeLocked(a, ms)
	}
}

// prewake starts a wake at SYN time when nothing is started, so that an
// http client's first request finds the machine booting already.
// It returns the wake, or nil when none was needed.
func (p *Proxy) prewake(a *App) *wakeOp {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !a.AutoStart {
		return nil
	}
	list := p.byApp[a.Name]
	for _, ms := range list {
		if ms.isStarted() {
			return nil
		}
		if ms.wake != nil {
			return ms.wake
		}
	}
	if ms := pickWakeable(list, p.cfg.Region); ms != nil {
		return p.startWakeLocked(a, ms)
	}
	return nil
}

func (p *Proxy) waitQueue(ctx context.Context, app string, w *waiter) (*machineState, error) {
	t := time.NewTimer(p.cfg.QueueTimeout)
	defer t.Stop()
	select {
	case ms := <-w.ch:
		return ms, nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	if as := p.appStates[app]; as != nil {
		for i, q := range as.queue {
			if q == w {
				as.queue = append(as.queue[:i], as.queue[i+1:]...)
				break
			}
		}
		p.met.queueDepth.WithLabelValues(app).Set(float64(len(as.queue)))
	}
	p.mu.Unlock()
	// A grant may have raced with the timeout; the channel is buffered, so
	// a grant made before we removed ourselves is there now.
	select {
	case ms := <-w.ch:
		return ms, nil
	default:
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("app %s: %w (%s); raise hard_limit or add machines", app, ErrQueueTimeout, p.cfg.QueueTimeout)
}

// serveQueueLocked grants machines below their hard limit to waiters,
// oldest first.
func (p *Proxy) serveQueueLocked(app string) {
	as := p.appStates[app]
	if as == nil || len(as.queue) == 0 {
		return
	}
	list := p.byApp[app]
	for len(as.queue) > 0 {
		w := as.queue[0]
		best, _, _ := pick(list, w.svc.Concurrency, p.cfg.Region, as.rr)
		if best == nil {
			break
		}
		as.rr++
		best.load++
		best.touch()
		w.ch <- best
		as.queue[0] = nil
		as.queue = as.queue[1:]
	}
	p.met.queueDepth.WithLabelValues(app).Set(float64(len(as.queue)))
}

// release returns the unit of load taken by acquire.
func (p *Proxy) release(ms *machineState, app string) {
	p.mu.Lock()
	ms.load--
	ms.touch()
	p.serveQueueLocked(app)
	p.mu.Unlock()
}
