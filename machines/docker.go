package machines

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Labels the docker driver reads and writes. Containers the driver creates
// carry LabelApp and LabelMachine; containers created elsewhere (compose)
// carry LabelApp and the adoption labels, and no LabelMachine.
const (
	LabelApp          = "devgate.app"
	LabelMachine      = "devgate.machine"
	LabelSpec         = "devgate.spec"    // hash of what the container runs
	LabelNetwork      = "devgate.network" // the driver network it was made for
	LabelInternalPort = "devgate.internal_port"
	LabelAutoStop     = "devgate.auto_stop"
	LabelMinRunning   = "devgate.min_machines_running"
	LabelIdleTimeout  = "devgate.idle_timeout"
	LabelOrg          = "devgate.org"
)

// DefaultDockerNetwork is the user-defined bridge network machines join.
const DefaultDockerNetwork = "devgate"

// ContainerRefPrefix marks a Spec.Image (and the store's Machine.Image) that
// names an existing container, "docker-container:<ID>", rather than an image:
// that is how an adopted container is started without being recreated.
const ContainerRefPrefix = "docker-container:"

// engineTimeout bounds one Engine API call made without a caller's context
// (Backend, the event loop's inspections).
const engineTimeout = 10 * time.Second

// exitQueue is the Exits buffer; the event loop blocks on a full queue
// until the consumer catches up or the driver closes.
const exitQueue = 64

// ErrNoEngine is returned by NewDockerDriver when no Docker engine answers.
var ErrNoEngine = errors.New("no Docker engine answers")

// DockerConfig configures a DockerDriver.
type DockerConfig struct {
	// Network is the user-defined bridge network machines are attached to
	// (created if missing), and the one whose address Backend returns.
	// Default DefaultDockerNetwork.
	Network string
	// Host is the engine address (unix:///var/run/docker.sock, tcp://...);
	// "" reads DOCKER_HOST, else the default socket.
	Host string
	// Notify, when set, receives lifecycle events of every container that
	// carries LabelApp (create, start, destroy), and Resync after the event
	// stream was re-established. It runs on the event goroutine: it must not
	// block.
	Notify func(ContainerEvent)
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// ContainerEvent is a lifecycle change of a labeled container.
type ContainerEvent struct {
	Action      string // "create", "start", "destroy" or "resync"
	ContainerID string
	Labels      map[string]string
	// External is true when the driver did not cause it (compose, the CLI).
	External bool
}

// Resync is the ContainerEvent.Action sent when events may have been missed.
const Resync = "resync"

// DockerDriver runs machines as containers through the Docker Engine API.
// It keeps a map from machine ID to container ID: containers it creates
// are found again by their LabelMachine label, adopted ones through Adopt or
// a Spec.Image of the form ContainerRefPrefix+ID.
type DockerDriver struct {
	cli     *client.Client
	network string
	notify  func(ContainerEvent)
	logf    func(string, ...any)

	mu     sync.Mutex
	byID   map[string]*dockerMachine // machine ID
	byCtr  map[string]string         // container ID -> machine ID
	netMu  sync.Mutex                // serialises network creation
	netOK  bool
	exits  chan Exit
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type dockerMachine struct {
	id        string
	container string
	ip        netip.Addr // on the driver's network; invalid when not running
	running   bool
	// pendingStarts counts our ContainerStart calls whose start event has
	// not arrived yet: those events are not external. (A flag cleared when
	// Start returns would race with the event, which may come later.)
	pendingStarts int
	stopping      bool // a Stop of ours is in progress: the exit is a stop
	killed        bool // someone else sent a kill (docker stop): the exit is a stop
	oom           bool
	signal        string
	timeout       int    // seconds
	hash          string // specHash of the container this driver made; "" if adopted
}

var _ Driver = (*DockerDriver)(nil)

// NewDockerDriver connects to the engine, negotiating the API version, and
// starts watching its events. It fails with ErrNoEngine when nothing
// answers within ctx (or 5 seconds).
func NewDockerDriver(ctx context.Context, cfg DockerConfig) (*DockerDriver, error) {
	if cfg.Network == "" {
		cfg.Network = DefaultDockerNetwork
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("%w at %s: %v; start Docker or set DOCKER_HOST", ErrNoEngine, cli.DaemonHost(), err)
	}
	d := &DockerDriver{
		cli: cli, network: cfg.Network, notify: cfg.Notify, logf: cfg.Logf,
		byID: map[string]*dockerMachine{}, byCtr: map[string]string{},
		exits: make(chan Exit, exitQueue),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	ready := make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.watch(ready)
	}()
	// Start returns only after the event stream is open, so that no die
	// of a machine started right after is missed.
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		d.Close()
		return nil, fmt.Errorf("%w: the event stream did not open", ErrNoEngine)
	}
	return d, nil
}

// Name is "docker".
func (d *DockerDriver) Name() string { return "docker" }

// Network is the bridge network machines are attached to.
func (d *DockerDriver) Network() string { return d.network }

// Exits delivers an Exit for every machine container that stops.
func (d *DockerDriver) Exits() <-chan Exit { return d.exits }

// Adopt maps a machine to an existing container, so that Stop, Backend and
// Exits work for it without a Start (after a gateway restart, or for a
// container that compose created).
func (d *DockerDriver) Adopt(machineID, containerID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.adoptLocked(machineID, containerID)
}

func (d *DockerDriver) adoptLocked(machineID, containerID string) *dockerMachine {
	m := d.byID[machineID]
	if m != nil && m.container == containerID {
		return m
	}
	if m != nil {
		delete(d.byCtr, m.container)
	}
	m = &dockerMachine{id: machineID, container: containerID}
	d.byID[machineID] = m
	d.byCtr[containerID] = machineID
	return m
}

// Forget drops a machine's mapping (its record is gone).
func (d *DockerDriver) Forget(machineID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m := d.byID[machineID]; m != nil {
		delete(d.byCtr, m.container)
		delete(d.byID, machineID)
	}
}

// MachineOf returns the machine mapped to a container.
func (d *DockerDriver) MachineOf(containerID string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.byCtr[containerID]
	return id, ok
}

// Start creates the machine's container if needed (or recreates it when
// what it runs changed) and starts it. It returns once the container runs.
func (d *DockerDriver) Start(ctx context.Context, spec Spec) error {
	if spec.Image == "" {
		return fmt.Errorf("start machine %s: no image; set [build] image in fly.toml", spec.ID)
	}
	var cid, hash string
	if ref, ok := strings.CutPrefix(spec.Image, ContainerRefPrefix); ok {
		cid = ref // adopted: run the container as its creator made it
	} else {
		hash = specHash(spec)
		d.mu.Lock()
		if m := d.byID[spec.ID]; m != nil && m.hash == hash {
			// Made by this driver for this very spec: skip the listing,
			// which is a good part of a wake's cost.
			cid = m.container
		}
		d.mu.Unlock()
		if cid == "" {
			var err error
			if cid, err = d.ensureContainer(ctx, spec, hash); err != nil {
				return fmt.Errorf("start machine %s: %w", spec.ID, err)
			}
		}
	}
	d.mu.Lock()
	m := d.adoptLocked(spec.ID, cid)
	m.hash = hash
	m.pendingStarts++
	m.stopping, m.killed, m.oom = false, false, false
	if spec.KillSignal != 0 {
		m.signal = strconv.Itoa(int(spec.KillSignal))
	}
	if spec.KillTimeout > 0 {
		m.timeout = int((spec.KillTimeout + time.Second - 1) / time.Second)
	}
	d.mu.Unlock()
	if _, err := d.cli.ContainerStart(ctx, cid, client.ContainerStartOptions{}); err != nil {
		d.mu.Lock()
		m.pendingStarts-- // no start event will come for this one
		d.mu.Unlock()
		if cerrdefs.IsNotFound(err) {
			d.Forget(spec.ID) // removed behind our back: the next Start recreates it
		}
		return fmt.Errorf("start machine %s (container %.12s): %w", spec.ID, cid, err)
	}
	ins, err := d.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("start machine %s: inspect container %.12s: %w", spec.ID, cid, err)
	}
	c := ins.Container
	if c.State == nil || !c.State.Running {
		code := -1
		if c.State != nil {
			code = c.State.ExitCode
		}
		return fmt.Errorf("start machine %s: container %.12s exited at once with code %d; see `docker logs %.12s`", spec.ID, cid, code, cid)
	}
	ip := d.addrIn(c.NetworkSettings)
	d.mu.Lock()
	m.running, m.ip = true, ip
	d.mu.Unlock()
	if !ip.IsValid() {
		return fmt.Errorf("start machine %s: container %.12s has no address on network %s; attach it to that network", spec.ID, cid, d.network)
	}
	return nil
}

// addrIn is the container's address on the driver's network, else on any
// network (an adopted container on another bridge the gateway can reach).
func (d *DockerDriver) addrIn(ns *container.NetworkSettings) netip.Addr {
	if ns == nil {
		return netip.Addr{}
	}
	if ep := ns.Networks[d.network]; ep != nil && ep.IPAddress.IsValid() {
		return ep.IPAddress
	}
	names := make([]string, 0, len(ns.Networks))
	for n := range ns.Networks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if ep := ns.Networks[n]; ep != nil && ep.IPAddress.IsValid() {
			return ep.IPAddress
		}
	}
	return netip.Addr{}
}

// ensureContainer returns the machine's container, created from spec. A
// container made for an older spec (a redeploy) is replaced.
func (d *DockerDriver) ensureContainer(ctx context.Context, spec Spec, hash string) (string, error) {
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: d.machineFilter(spec.ID)})
	if err != nil {
		return "", fmt.Errorf("list containers: %w", err)
	}
	for _, c := range res.Items {
		if c.Labels[LabelSpec] == hash {
			return c.ID, nil
		}
		// What the machine runs changed: the old container goes.
		if c.State == container.StateRunning {
			if _, err := d.cli.ContainerStop(ctx, c.ID, client.ContainerStopOptions{}); err != nil {
				return "", fmt.Errorf("stop outdated container %.12s: %w", c.ID, err)
			}
		}
		if _, err := d.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("remove outdated container %.12s: %w", c.ID, err)
		}
	}
	if err := d.ensureNetwork(ctx); err != nil {
		return "", err
	}
	cfg := &container.Config{
		Image:  spec.Image,
		Env:    dockerEnv(spec),
		Labels: map[string]string{LabelApp: spec.App, LabelMachine: spec.ID, LabelSpec: hash, LabelNetwork: d.network},
	}
	if len(spec.Command) > 0 {
		cfg.Cmd = spec.Command
	}
	if spec.KillSignal != 0 {
		cfg.StopSignal = strconv.Itoa(int(spec.KillSignal))
	}
	if spec.KillTimeout > 0 {
		t := int((spec.KillTimeout + time.Second - 1) / time.Second)
		cfg.StopTimeout = &t
	}
	created, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             "devgate-" + spec.App + "-" + spec.ID,
		Config:           cfg,
		HostConfig:       &container.HostConfig{NetworkMode: container.NetworkMode(d.network)},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{d.network: {}}},
	})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("image %q is not on this engine (devgate never pulls): build or load it first, e.g. images/build.sh: %w", spec.Image, err)
		}
		return "", fmt.Errorf("create container: %w", err)
	}
	return created.ID, nil
}

// ensureNetwork creates the bridge network once if it is missing.
func (d *DockerDriver) ensureNetwork(ctx context.Context) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if d.netOK {
		return nil
	}
	if _, err := d.cli.NetworkInspect(ctx, d.network, client.NetworkInspectOptions{}); err == nil {
		d.netOK = true
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect network %s: %w", d.network, err)
	}
	_, err := d.cli.NetworkCreate(ctx, d.network, client.NetworkCreateOptions{Driver: "bridge", Labels: map[string]string{"devgate.network": "true"}})
	if err != nil && !cerrdefs.IsConflict(err) {
		return fmt.Errorf("create network %s: %w", d.network, err)
	}
	d.netOK = true
	return nil
}

// dockerEnv is the variables Fly sets, then spec.Env (sorted, so the spec
// hash is stable). Unlike a process, a container does not inherit the
// gateway's environment.
func dockerEnv(spec Spec) []string {
	var env []string
	if len(spec.Ports) > 0 {
		env = append(env, "PORT="+strconv.Itoa(spec.Ports[0]))
	}
	env = append(env, "FLY_APP_NAME="+spec.App, "FLY_MACHINE_ID="+spec.ID, "FLY_REGION="+spec.Region)
	if spec.PrivateIP.IsValid() {
		env = append(env, "FLY_PRIVATE_IP="+spec.PrivateIP.String())
	}
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+spec.Env[k])
	}
	return env
}

func specHash(spec Spec) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%q\x00%d\x00%d", spec.Image, spec.Command, dockerEnv(spec), spec.KillSignal, spec.KillTimeout)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Stop sends the kill signal, waits up to the kill timeout, then kills.
func (d *DockerDriver) Stop(ctx context.Context, id string) error {
	m, err := d.lookup(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotRunning) {
			return nil
		}
		return err
	}
	d.mu.Lock()
	m.stopping = true
	opts := client.ContainerStopOptions{Signal: m.signal}
	if m.timeout > 0 {
		t := m.timeout
		opts.Timeout = &t
	}
	cid := m.container
	d.mu.Unlock()
	if _, err := d.cli.ContainerStop(ctx, cid, opts); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("stop machine %s (container %.12s): %w", id, cid, err)
	}
	d.mu.Lock()
	m.running, m.ip = false, netip.Addr{}
	d.mu.Unlock()
	return nil
}

// Destroy stops the machine and removes its container.
func (d *DockerDriver) Destroy(ctx context.Context, id string) error {
	m, err := d.lookup(ctx, id)
	if errors.Is(err, ErrNotRunning) {
		return nil // no container: nothing to remove
	}
	if err != nil {
		return err
	}
	if err := d.Stop(ctx, id); err != nil {
		return err
	}
	if _, err := d.cli.ContainerRemove(ctx, m.container, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("destroy machine %s (container %.12s): %w", id, m.container, err)
	}
	d.Forget(id)
	return nil
}

// RemoveContainer force-removes a container (an orphan whose machine is gone).
func (d *DockerDriver) RemoveContainer(ctx context.Context, containerID string) error {
	if _, err := d.cli.ContainerRemove(ctx, containerID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove container %.12s: %w", containerID, err)
	}
	return nil
}

// lookup finds a machine's container: the map, else a container this
// driver created for it earlier (before a gateway restart). ErrNotRunning
// when there is none.
func (d *DockerDriver) lookup(ctx context.Context, id string) (*dockerMachine, error) {
	d.mu.Lock()
	m := d.byID[id]
	d.mu.Unlock()
	if m != nil {
		return m, nil
	}
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: d.machineFilter(id)})
	if err != nil {
		return nil, fmt.Errorf("machine %s: list containers: %w", id, err)
	}
	if len(res.Items) == 0 {
		return nil, fmt.Errorf("machine %s: no container: %w", id, ErrNotRunning)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.adoptLocked(id, res.Items[0].ID), nil
}

// Backend is the container's address on the bridge network and the
// internal port itself: containers need no port mapping, so two machines
// can both listen on 80.
func (d *DockerDriver) Backend(id string, internalPort int) (netip.AddrPort, error) {
	d.mu.Lock()
	m := d.byID[id]
	var ip netip.Addr
	var cid string
	if m != nil {
		ip, cid = m.ip, m.container
	}
	d.mu.Unlock()
	if ip.IsValid() {
		return netip.AddrPortFrom(ip, uint16(internalPort)), nil
	}
	ctx, cancel := context.WithTimeout(d.ctx, engineTimeout)
	defer cancel()
	if m == nil {
		lm, err := d.lookup(ctx, id)
		if err != nil {
			return netip.AddrPort{}, err
		}
		m, cid = lm, lm.container
	}
	ins, err := d.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return netip.AddrPort{}, fmt.Errorf("machine %s: container %.12s is gone: %w", id, cid, ErrNotRunning)
		}
		return netip.AddrPort{}, fmt.Errorf("machine %s: inspect container: %w", id, err)
	}
	if ins.Container.State == nil || !ins.Container.State.Running {
		return netip.AddrPort{}, fmt.Errorf("machine %s: %w", id, ErrNotRunning)
	}
	ip = d.addrIn(ins.Container.NetworkSettings)
	if !ip.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("machine %s: container %.12s has no address on network %s: %w", id, cid, d.network, ErrNotRunning)
	}
	d.mu.Lock()
	m.running, m.ip = true, ip
	d.mu.Unlock()
	return netip.AddrPortFrom(ip, uint16(internalPort)), nil
}

// Close stops watching the engine and closes Exits. Containers keep
// running: they belong to the engine, and the next gateway adopts them
// again (see the gateway's docker adoption).
func (d *DockerDriver) Close() error {
	d.once.Do(func() {
		d.cancel()
		d.wg.Wait()
		close(d.exits)
		d.cli.Close()
	})
	return nil
}

// machineFilter finds the container this driver made for a machine. The
// network label keeps gateways on one engine with different networks
// (tests, several compose projects) apart.
func (d *DockerDriver) machineFilter(id string) client.Filters {
	return make(client.Filters).Add("label", LabelMachine+"="+id, LabelNetwork+"="+d.network)
}
