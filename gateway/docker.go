package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/store"
)

// Docker machines and adoption.
//
// Containers that carry the label devgate.app, are attached to the docker
// driver's network and were not made by devgate (no devgate.machine label)
// are adopted: the app is created from their labels (fly.toml generated,
// Flycast on, one Flycast address) and each container becomes a machine with
// driver "docker". The link from machine to container is the machine
// record's Image, "docker-container:<container ID>" (machines.ContainerRefPrefix):
// it survives restarts in the store, so re-adoption finds the same record
// and never duplicates it; the driver keeps the in-memory map (Adopt). An
// adopted machine whose container is gone is deleted. Containers the driver
// made for a machine that no longer exists (orphans) are removed.

// DockerNetworkEnv names the bridge network the docker driver uses and
// adopts containers from (default machines.DefaultDockerNetwork). In a
// compose file the gateway and the app containers share it.
const DockerNetworkEnv = "DEVGATE_DOCKER_NETWORK"

// adoptedMarker opens the fly.toml of an adopted app: its config is kept in
// step with the labels, and a deployed app is never overwritten.
const adoptedMarker = "# adopted by devgate from Docker labels; change the labels, not this file\n"

// dockerEventQueue bounds the container events waiting for the adoption
// loop; on overflow one full resync replaces the dropped events.
const dockerEventQueue = 256

// maxLabelMinRunning bounds devgate.min_machines_running from a label.
const maxLabelMinRunning = MaxMachinesPerApp

// startDocker adds the docker driver when a Docker engine answers and adopts
// labeled containers. No engine is not an error: one line is logged and
// apps with [build] image need a command. Call it after startMachines and
// before startDataPlane (the proxy takes g.drivers).
func (g *Gateway) startDocker(ctx context.Context) error {
	a := &adopter{g: g, kick: make(chan machines.ContainerEvent, dockerEventQueue)}
	dd, err := machines.NewDockerDriver(ctx, machines.DockerConfig{
		Network: os.Getenv(DockerNetworkEnv),
		Notify:  a.notify,
		Logf:    g.logf,
	})
	if err != nil {
		g.logf("docker: %v; Docker machines are off", err)
		return nil
	}
	a.dd = dd
	g.drivers[dd.Name()] = dd
	g.closers = append(g.closers, dd.Close)
	// One badly labeled container must not keep the gateway down: adoption
	// errors are logged, and the rest is adopted.
	if err := a.reconcile(ctx, true); err != nil {
		g.logf("docker: adopt containers: %v", err)
	}
	actx, cancel := context.WithCancel(context.Background())
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.loop(actx)
	}()
	g.closers = append(g.closers, func() error { cancel(); a.wg.Wait(); return nil })
	return nil
}

// adopter keeps the store in step with labeled containers.
type adopter struct {
	g        *Gateway
	dd       *machines.DockerDriver
	kick     chan machines.ContainerEvent
	mu       sync.Mutex
	overflow bool
	wg       sync.WaitGroup
}

// notify runs on the driver's event goroutine: it only queues.
func (a *adopter) notify(ev machines.ContainerEvent) {
	select {
	case a.kick <- ev:
	default:
		a.mu.Lock()
		a.overflow = true
		a.mu.Unlock()
	}
}

func (a *adopter) loop(ctx context.Context) {
	for {
		var ev machines.ContainerEvent
		select {
		case <-ctx.Done():
			return
		case ev = <-a.kick:
		}
		a.mu.Lock()
		resync := a.overflow
		a.overflow = false
		a.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, adoptTimeout)
		var err error
		switch {
		case resync || ev.Action == machines.Resync || ev.Action == "create" || ev.Action == "destroy":
			err = a.reconcile(rctx, false)
		case ev.Action == "start" && ev.External:
			err = a.startedOutside(rctx, ev.ContainerID)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			a.g.logf("docker: adopt containers: %v", err)
		}
	}
}

// adoptTimeout bounds one adoption pass.
const adoptTimeout = 30 * time.Second

// reconcile adopts new labeled containers, deletes adopted machines whose
// container is gone, and removes orphaned containers. At start-up (initial)
// it also records each machine's real state, since no proxy owns it yet.
func (a *adopter) reconcile(ctx context.Context, initial bool) error {
	st := a.g.store
	cs, err := a.dd.ListLabeled(ctx)
	if err != nil {
		return err
	}
	ms, err := st.ListMachines(ctx, "")
	if err != nil {
		return err
	}
	byID := map[string]store.Machine{}
	byCtr := map[string]store.Machine{}
	for _, m := range ms {
		if m.Driver != a.dd.Name() {
			continue
		}
		byID[m.ID] = m
		if cid, ok := strings.CutPrefix(m.Image, machines.ContainerRefPrefix); ok {
			byCtr[cid] = m
		}
	}
	seen := map[string]bool{}
	var errs []error
	for _, c := range cs {
		seen[c.ID] = true
		if id := c.Labels[machines.LabelMachine]; id != "" {
			m, ok := byID[id]
			if !ok {
				a.g.logf("docker: removing container %s: its machine %s no longer exists", c.Name, id)
				errs = append(errs, a.dd.RemoveContainer(ctx, c.ID))
				continue
			}
			a.dd.Adopt(id, c.ID)
			if initial {
				errs = append(errs, a.syncState(ctx, m, c.Running))
			}
			continue
		}
		if m, ok := byCtr[c.ID]; ok {
			a.dd.Adopt(m.ID, c.ID)
			if initial {
				errs = append(errs, a.syncState(ctx, m, c.Running))
			}
			continue
		}
		errs = append(errs, a.adopt(ctx, c))
	}
	for cid, m := range byCtr {
		if seen[cid] {
			continue
		}
		a.g.logf("docker: container %.12s of machine %s (app %s) is gone; deleting the machine", cid, m.ID, m.App)
		a.dd.Forget(m.ID)
		if err := st.DeleteMachine(ctx, m.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if initial {
		// Driver-made machines whose container is gone will get a new one on
		// their next start; until then they are stopped.
		for id, m := range byID {
			if _, adopted := strings.CutPrefix(m.Image, machines.ContainerRefPrefix); adopted || a.hasContainer(cs, id) {
				continue
			}
			errs = append(errs, a.syncState(ctx, m, false))
		}
	}
	return errors.Join(errs...)
}

func (a *adopter) hasContainer(cs []machines.ContainerInfo, id string) bool {
	for _, c := range cs {
		if c.Labels[machines.LabelMachine] == id {
			return true
		}
	}
	return false
}

// syncState records whether a machine's container runs, at start-up.
func (a *adopter) syncState(ctx context.Context, m store.Machine, running bool) error {
	want := store.MachineStopped
	if running {
		want = store.MachineStarted
	}
	if m.State == want || (!running && (m.State == store.MachineCreated || m.State == store.MachineFailed)) {
		return nil
	}
	_, err := a.g.store.UpdateMachine(ctx, m.ID, func(m *store.Machine) error {
		m.State, m.Reason = want, "found so at gateway start"
		m.UpdatedAt = time.Now()
		return nil
	})
	return err
}

// startedOutside records a container that someone else started (compose
// up, docker start) as started, unless devgate itself is starting or
// stopping it.
func (a *adopter) startedOutside(ctx context.Context, cid string) error {
	id, ok := a.dd.MachineOf(cid)
	if !ok {
		return a.reconcile(ctx, false)
	}
	_, err := a.g.store.UpdateMachine(ctx, id, func(m *store.Machine) error {
		switch m.State {
		case store.MachineStopped, store.MachineCreated, store.MachineFailed:
			m.State, m.Reason = store.MachineStarted, "started outside devgate"
			m.UpdatedAt = time.Now()
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// adopt records one container created elsewhere as a machine, creating its
// app first when needed.
func (a *adopter) adopt(ctx context.Context, c machines.ContainerInfo) error {
	al, err := parseAdoptLabels(c.Labels)
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	if err := a.ensureApp(ctx, al); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	state := store.MachineStopped
	if c.Running {
		state = store.MachineStarted
	}
	m, err := a.g.store.CreateMachine(ctx, store.Machine{
		App: al.App, Region: a.g.cfg.Region, State: state, Driver: a.dd.Name(),
		Image: machines.ContainerRefPrefix + c.ID, ProcessGroup: "app", Reason: "adopted container " + c.Name,
	})
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	a.dd.Adopt(m.ID, c.ID)
	a.g.logf("docker: adopted container %s as machine %s of app %s", c.Name, m.ID, al.App)
	return nil
}

// ensureApp creates an adopted app (config from labels, Flycast address),
// or brings an adopted app's config in step with changed labels. An app
// that was deployed by hand keeps its config.
func (a *adopter) ensureApp(ctx context.Context, al adoptLabels) error {
	st := a.g.store
	text := al.config(a.g.cfg.Region)
	app, err := st.GetApp(ctx, al.App)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if _, err := st.EnsureOrg(ctx, al.Org); err != nil {
			return fmt.Errorf("organization %s: %w", al.Org, err)
		}
		app, err = st.CreateApp(ctx, store.App{Name: al.App, Org: al.Org, Flycast: true, Config: text, Deployed: true})
		if errors.Is(err, store.ErrExists) {
			app, err = st.GetApp(ctx, al.App) // another adoption won the race
		}
		if err != nil {
			return err
		}
	case err != nil:
		return err
	case strings.HasPrefix(string(app.Config), adoptedMarker) && string(app.Config) != string(text):
		if app, err = st.UpdateApp(ctx, al.App, func(a *store.App) error { a.Config = text; return nil }); err != nil {
			return err
		}
	}
	ips, err := st.ListIPs(ctx, al.App)
	if err != nil {
		return err
	}
	if len(ips) == 0 {
		if _, err := st.AllocateIP(ctx, al.App, app.Org, app.Network, "global"); err != nil {
			return fmt.Errorf("allocate a Flycast address for %s: %w", al.App, err)
		}
	}
	return nil
}

// adoptLabels are the devgate.* labels of a container to adopt.
type adoptLabels struct {
	App          string
	Org          string
	InternalPort int
	AutoStop     string // off, stop, suspend
	MinRunning   int
	IdleTimeout  time.Duration
}

// parseAdoptLabels validates labels, which come from whoever can create a
// container: every value that reaches fly.toml is checked or re-formatted.
func parseAdoptLabels(l map[string]string) (adoptLabels, error) {
	al := adoptLabels{App: l[machines.LabelApp], Org: store.DefaultOrg, InternalPort: appconfig.DefaultInternalPort, AutoStop: "stop"}
	if err := store.ValidateName("app", al.App); err != nil {
		return al, fmt.Errorf("label %s: %w", machines.LabelApp, err)
	}
	if v, ok := l[machines.LabelOrg]; ok {
		if err := store.ValidateName("organization", v); err != nil {
			return al, fmt.Errorf("label %s: %w", machines.LabelOrg, err)
		}
		al.Org = v
	}
	if v, ok := l[machines.LabelInternalPort]; ok {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			return al, fmt.Errorf("label %s=%q: want a port 1..65535", machines.LabelInternalPort, v)
		}
		al.InternalPort = p
	}
	if v, ok := l[machines.LabelAutoStop]; ok {
		switch v {
		case "off", "false":
			al.AutoStop = "off"
		case "stop", "true", "":
			al.AutoStop = "stop"
		case "suspend":
			al.AutoStop = "suspend"
		default:
			return al, fmt.Errorf("label %s=%q: want off, stop or suspend", machines.LabelAutoStop, v)
		}
	}
	if v, ok := l[machines.LabelMinRunning]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxLabelMinRunning {
			return al, fmt.Errorf("label %s=%q: want 0..%d", machines.LabelMinRunning, v, maxLabelMinRunning)
		}
		al.MinRunning = n
	}
	if v, ok := l[machines.LabelIdleTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return al, fmt.Errorf("label %s=%q: want a duration such as 30s or 5m", machines.LabelIdleTimeout, v)
		}
		al.IdleTimeout = d
	}
	return al, nil
}

// config is the fly.toml of an adopted app: what `devgate launch --flycast`
// writes, with the labels' auto-stop settings.
func (al adoptLabels) config(region string) []byte {
	text := string(appconfig.Generate(appconfig.LaunchOptions{App: al.App, PrimaryRegion: region, InternalPort: al.InternalPort, Flycast: true}))
	text = strings.Replace(text, "auto_stop_machines = 'stop'", "auto_stop_machines = '"+al.AutoStop+"'", 1)
	text = strings.Replace(text, "min_machines_running = 0", "min_machines_running = "+strconv.Itoa(al.MinRunning), 1)
	if al.IdleTimeout > 0 {
		text += "\n[devgate]\n  idle_timeout = '" + al.IdleTimeout.String() + "'\n"
	}
	return []byte(adoptedMarker + text)
}
