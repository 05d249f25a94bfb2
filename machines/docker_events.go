package machines

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
)

// Backoff for re-opening the event stream after the engine went away: it
// starts short so a restarted engine is noticed quickly, and stays bounded.
const (
	eventRetryMin = 100 * time.Millisecond
	eventRetryMax = 5 * time.Second
)

// watch follows the engine's events for containers labeled LabelApp until
// Close. ready is closed once the first stream is open.
func (d *DockerDriver) watch(ready chan struct{}) {
	retry := eventRetryMin
	first := true
	for d.ctx.Err() == nil {
		err := d.follow(ready, first)
		if d.ctx.Err() != nil {
			return
		}
		if first {
			first = false
		}
		d.logf("docker: event stream ended (%v); reconnecting in %s", err, retry)
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, eventRetryMax)
	}
}

// follow reads one event stream until it fails.
func (d *DockerDriver) follow(ready chan struct{}, first bool) error {
	ctx, cancel := context.WithCancel(d.ctx)
	defer cancel()
	f := make(client.Filters).Add("type", "container").Add("label", LabelApp).
		Add("event", "create", "start", "die", "oom", "kill", "destroy")
	res := d.cli.Events(ctx, client.EventsListOptions{Filters: f})
	// The client opens the stream before returning; a failure to connect
	// arrives on Err. Ping proves the engine is there.
	pctx, pcancel := context.WithTimeout(ctx, engineTimeout)
	_, perr := d.cli.Ping(pctx, client.PingOptions{})
	pcancel()
	if first {
		close(ready)
	} else if perr == nil && d.notify != nil {
		// Events may have been missed while the stream was down.
		d.notify(ContainerEvent{Action: Resync, External: true})
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err, ok := <-res.Err:
			if !ok || err == nil {
				return errors.New("stream closed")
			}
			return err
		case m := <-res.Messages:
			d.handle(m)
		}
	}
}

func (d *DockerDriver) handle(ev events.Message) {
	cid := ev.Actor.ID
	attrs := ev.Actor.Attributes
	d.mu.Lock()
	id, known := d.byCtr[cid]
	if !known && attrs[LabelMachine] != "" && attrs[LabelNetwork] == d.network {
		// A container of ours from before a restart, not yet looked up.
		id, known = attrs[LabelMachine], true
		d.adoptLocked(id, cid)
	}
	var m *dockerMachine
	if known {
		m = d.byID[id]
	}
	external := true
	if m != nil && ev.Action == events.ActionStart && m.pendingStarts > 0 {
		m.pendingStarts--
		external = false
	}
	switch ev.Action {
	case events.ActionOOM:
		if m != nil {
			m.oom = true
		}
		d.mu.Unlock()
		return
	case events.ActionKill:
		if m != nil && !m.stopping {
			m.killed = true // docker stop, compose stop: a deliberate stop
		}
		d.mu.Unlock()
		return
	case events.ActionDie:
		var exit Exit
		if m != nil {
			exit = d.exitOf(m, attrs)
			m.running, m.ip, m.stopping, m.killed, m.oom = false, netip.Addr{}, false, false, false
		}
		d.mu.Unlock()
		if m != nil {
			select {
			case d.exits <- exit:
			case <-d.ctx.Done():
			}
		}
		return
	}
	d.mu.Unlock()
	if d.notify != nil {
		d.notify(ContainerEvent{Action: string(ev.Action), ContainerID: cid, Labels: maps.Clone(attrs), External: external})
	}
}

// exitOf builds the Exit for a die event. Called with d.mu held.
func (d *DockerDriver) exitOf(m *dockerMachine, attrs map[string]string) Exit {
	code, err := strconv.Atoi(attrs["exitCode"])
	if err != nil {
		code = -1
	}
	e := Exit{ID: m.id, ExitCode: code, Stopped: m.stopping || m.killed}
	switch {
	case m.oom:
		e.Err = fmt.Errorf("container %.12s ran out of memory (exit code %d)", m.container, code)
	case e.Stopped:
	case code != 0:
		e.Err = fmt.Errorf("container %.12s exited with code %d; see `docker logs %.12s`", m.container, code, m.container)
	}
	return e
}

// ContainerInfo is a labeled container as the engine lists it.
type ContainerInfo struct {
	ID      string
	Name    string
	Image   string
	Labels  map[string]string
	Running bool
}

// ListLabeled lists every container, running or not, that carries LabelApp
// and is attached to the driver's network: the containers devgate made and
// those it may adopt. Containers on other networks are left alone, so that
// gateways with different networks share one engine.
func (d *DockerDriver) ListLabeled(ctx context.Context) ([]ContainerInfo, error) {
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelApp).Add("network", d.network)})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]ContainerInfo, 0, len(res.Items))
	for _, c := range res.Items {
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, ContainerInfo{ID: c.ID, Name: name, Image: c.Image, Labels: c.Labels, Running: c.State == "running"})
	}
	return out, nil
}
