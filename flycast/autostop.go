package flycast

import (
	"sync"
	"time"

	"github.com/devgate/devgate/machines"
)

// waitReady is the readiness probe: a fast-retry dial, never a slow poll.
var waitReady = machines.WaitReady

// Auto-stop tick bounds: often enough that an idle period is honoured within
// a quarter of itself, never a busy loop, never slower than 10s.
const (
	minAutoStopTick = 100 * time.Millisecond
	maxAutoStopTick = 10 * time.Second
)

func (p *Proxy) autoStopLoop() {
	t := time.NewTimer(p.autoStopTick())
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.autoStopPass()
		t.Reset(p.autoStopTick())
	}
}

// autoStopTick is a quarter of the shortest idle period of any app.
func (p *Proxy) autoStopTick() time.Duration {
	p.mu.Lock()
	idle := p.cfg.IdleTimeout
	for _, a := range p.apps {
		if a.IdleTimeout > 0 && a.IdleTimeout < idle {
			idle = a.IdleTimeout
		}
	}
	p.mu.Unlock()
	return min(max(idle/4, minAutoStopTick), maxAutoStopTick)
}

// autoStopPass stops at most one idle machine per app whose auto_stop is on
// and which has more started machines than min_machines_running. A machine
// is idle when it has no open connection and has seen no byte for the app's
// idle period. It returns the IDs it stopped, after they stopped.
func (p *Proxy) autoStopPass() []string {
	now := time.Now().UnixNano()
	type victim struct {
		ms   *machineState
		id   string
		done chan struct{}
	}
	var victims []victim
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	for name, a := range p.apps {
		if a.AutoStop == "" || a.AutoStop == "off" {
			continue
		}
		idle := p.idleTimeout(a).Nanoseconds()
		started := 0
		var cand *machineState
		for _, ms := range p.byApp[name] {
			if !ms.isStarted() || ms.wake != nil {
				continue
			}
			started++
			last := ms.lastActive.Load()
			if ms.load > 0 || ms.direct > 0 || now-last < idle {
				continue
			}
			if cand == nil || last < cand.lastActive.Load() {
				cand = ms
			}
		}
		if cand == nil || started <= a.MinRunning {
			continue
		}
		done := make(chan struct{})
		cand.stopDone = done
		cand.setStartedFlag()
		victims = append(victims, victim{cand, cand.rec.ID, done})
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	ids := make([]string, 0, len(victims))
	for _, v := range victims {
		ids = append(ids, v.id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.cfg.Logf("flycast: machine %s idle, stopping", v.id)
			if err := p.runStop(v.ms, v.id, v.done, "auto-stopped after idle period"); err != nil {
				p.cfg.Logf("flycast: auto-stop: %v", err)
			}
		}()
	}
	wg.Wait()
	return ids
}
