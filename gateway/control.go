package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/store"
)

// DefaultMachines is how many machines a first deploy creates, as fly launch
// does for redundancy.
const DefaultMachines = 2

// MaxMachinesPerApp bounds `machine run`, so one script cannot fill the host.
const MaxMachinesPerApp = 64

// control implements api.Control on a gateway.
type control struct{ g *Gateway }

var _ api.Control = control{}

func (c control) Status() api.Status {
	return api.Status{
		Region:    c.g.cfg.Region,
		Regions:   []string{c.g.cfg.Region},
		Endpoint:  c.g.cfg.Endpoint,
		PublicKey: c.g.key.PublicKey().String(),
		Version:   c.g.cfg.Version,
	}
}

func (c control) PeerStats() (map[string]api.PeerStat, error) {
	stats, err := c.g.tun.Stats()
	if err != nil {
		return nil, err
	}
	out := make(map[string]api.PeerStat, len(stats))
	for _, s := range stats {
		ps := api.PeerStat{LastHandshake: s.LastHandshake, RxBytes: int64(s.RxBytes), TxBytes: int64(s.TxBytes)}
		if s.Endpoint.IsValid() {
			ps.Endpoint = s.Endpoint.String()
		}
		out[s.PublicKey.String()] = ps
	}
	return out, nil
}

func (c control) CheckConfig(filename string, config []byte) ([]string, error) {
	_, warns, err := checkConfig(filename, config)
	return warns, err
}

// checkConfig parses a fly.toml once for both its warnings and its use.
func checkConfig(filename string, config []byte) (*appconfig.Config, []string, error) {
	cfg, warns, err := appconfig.Parse(filename, config)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	out := make([]string, 0, len(warns))
	for _, w := range warns {
		out = append(out, w.String())
	}
	if len(cfg.Services()) == 0 {
		out = append(out, filename+": no [http_service] or [[services]]: nothing will be reachable on the Flycast address")
	}
	return cfg, out, nil
}

func (c control) Deploy(ctx context.Context, name string, req api.DeployRequest) (api.DeployResponse, error) {
	st := c.g.store
	cfg, warns, err := checkConfig("fly.toml", req.Config)
	if err != nil {
		return api.DeployResponse{}, err
	}
	if cfg.App != "" && cfg.App != name {
		return api.DeployResponse{}, api.Invalidf("fly.toml is for app %q, not %q; deploy from that app's directory or pass -a %s", cfg.App, name, cfg.App)
	}
	driver, err := c.driverFor(cfg)
	if err != nil {
		return api.DeployResponse{}, err
	}
	app, err := st.UpdateApp(ctx, name, func(a *store.App) error {
		a.Config, a.Deployed = req.Config, true
		a.Flycast = a.Flycast || req.Flycast
		return nil
	})
	if err != nil {
		return api.DeployResponse{}, err
	}
	ips, err := st.ListIPs(ctx, name)
	if err != nil {
		return api.DeployResponse{}, err
	}
	if len(ips) == 0 && app.Flycast {
		ip, err := st.AllocateIP(ctx, name, app.Org, app.Network, "global")
		if err != nil {
			return api.DeployResponse{}, fmt.Errorf("allocate a Flycast address: %w", err)
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		warns = append(warns, "the app has no address: devgate has only private (Flycast) addresses; run `devgate deploy --flycast` or `devgate ips allocate-v6 --private`")
	} else if hasForceHTTPS(cfg) {
		warns = append(warns, "force_https is on, but the app has only Flycast addresses, which carry plain HTTP: every request will get a 301 to https://; set force_https = false")
	}
	ms, err := st.ListMachines(ctx, name)
	if err != nil {
		return api.DeployResponse{}, err
	}
	cmd := cfg.Command("app")
	for len(ms) < DefaultMachines {
		m, err := st.CreateMachine(ctx, store.Machine{App: name, Region: c.g.cfg.Region, State: store.MachineCreated, Driver: driver, Image: cfg.Build.Image, Command: cmd, ProcessGroup: "app"})
		if err != nil {
			return api.DeployResponse{}, fmt.Errorf("create machine: %w", err)
		}
		ms = append(ms, m)
	}
	// A redeploy replaces what each machine runs: record the new command,
	// stop the running ones, and start all of them as Fly's deploy does.
	for i, m := range ms {
		if _, err := st.UpdateMachine(ctx, m.ID, func(m *store.Machine) error {
			m.Image, m.Command, m.Driver = cfg.Build.Image, cmd, driver
			return nil
		}); err != nil {
			return api.DeployResponse{}, err
		}
		if m.State == store.MachineStarted {
			if err := c.g.proxy.StopMachine(ctx, m.ID); err != nil {
				return api.DeployResponse{}, fmt.Errorf("stop machine %s for the new version: %w", m.ID, err)
			}
		}
		ms[i] = m
	}
	if err := c.g.waitApplied(ctx, name, req.Config, len(ms)); err != nil {
		return api.DeployResponse{}, err
	}
	var startErrs []error
	for _, m := range ms {
		if err := c.g.proxy.StartMachine(ctx, m.ID); err != nil {
			startErrs = append(startErrs, err) // the error names the app and machine
		}
	}
	ms, err = st.ListMachines(ctx, name)
	if err != nil {
		return api.DeployResponse{}, err
	}
	if len(startErrs) == len(ms) && len(ms) > 0 {
		return api.DeployResponse{}, fmt.Errorf("no machine of %s started (see `devgate machine list -a %s` and the logs in the data dir): %w", name, name, errors.Join(startErrs...))
	}
	for _, e := range startErrs {
		warns = append(warns, e.Error())
	}
	return api.DeployResponse{App: app, IPs: ips, Machines: ms, Warnings: warns}, nil
}

func (c control) driverFor(cfg *appconfig.Config) (string, error) {
	if cfg.Build.Image != "" {
		if _, ok := c.g.drivers["docker"]; ok {
			return "docker", nil
		}
		if len(cfg.Command("app")) == 0 {
			return "", api.Invalidf("[build] image %q needs the Docker driver, which is not available on this gateway; add a command under [processes] to run it as a process", cfg.Build.Image)
		}
	}
	if len(cfg.Command("app")) == 0 {
		return "", api.Invalidf("fly.toml says nothing to run: add [processes] app = \"<command>\" (or launch with --command)")
	}
	return "process", nil
}

func hasForceHTTPS(cfg *appconfig.Config) bool {
	for _, s := range cfg.Services() {
		for _, p := range s.Ports {
			if p.ForceHTTPS {
				return true
			}
		}
	}
	return false
}

func (c control) RunMachine(ctx context.Context, name string, req api.RunMachineRequest) (store.Machine, error) {
	st := c.g.store
	app, err := st.GetApp(ctx, name)
	if err != nil {
		return store.Machine{}, err
	}
	if !app.Deployed {
		return store.Machine{}, api.Invalidf("app %s has not been deployed; run `devgate deploy` first", name)
	}
	if req.Region != "" && req.Region != c.g.cfg.Region {
		return store.Machine{}, api.Invalidf("no gateway serves region %q; regions that exist: %s", req.Region, c.g.cfg.Region)
	}
	ms, err := st.ListMachines(ctx, name)
	if err != nil {
		return store.Machine{}, err
	}
	if len(ms) >= MaxMachinesPerApp {
		return store.Machine{}, api.Invalidf("app %s already has %d machines, the most one app may have; destroy some with `devgate machine destroy`", name, len(ms))
	}
	cfg, _, err := appconfig.Parse("fly.toml", app.Config)
	if err != nil {
		return store.Machine{}, err
	}
	driver, err := c.driverFor(cfg)
	if err != nil {
		return store.Machine{}, err
	}
	m, err := st.CreateMachine(ctx, store.Machine{App: name, Region: c.g.cfg.Region, State: store.MachineCreated, Driver: driver, Image: cfg.Build.Image, Command: cfg.Command("app"), ProcessGroup: "app"})
	if err != nil {
		return store.Machine{}, err
	}
	if err := c.g.waitApplied(ctx, name, app.Config, len(ms)+1); err != nil {
		return m, err
	}
	if err := c.g.proxy.StartMachine(ctx, m.ID); err != nil {
		return m, fmt.Errorf("start machine %s: %w", m.ID, err)
	}
	return st.GetMachine(ctx, m.ID)
}

func (c control) StartMachine(ctx context.Context, id string) error {
	if _, err := c.g.store.GetMachine(ctx, id); err != nil {
		return err
	}
	return c.g.proxy.StartMachine(ctx, id)
}

func (c control) StopMachine(ctx context.Context, id string) error {
	if _, err := c.g.store.GetMachine(ctx, id); err != nil {
		return err
	}
	return c.g.proxy.StopMachine(ctx, id)
}

func (c control) DestroyMachine(ctx context.Context, id string) error {
	m, err := c.g.store.GetMachine(ctx, id)
	if err != nil {
		return err
	}
	if err := c.g.proxy.StopMachine(ctx, id); err != nil {
		return fmt.Errorf("stop machine %s: %w", id, err)
	}
	if d, ok := c.g.drivers[m.Driver]; ok {
		if err := d.Destroy(ctx, id); err != nil {
			return fmt.Errorf("destroy machine %s: %w", id, err)
		}
	}
	return c.g.store.DeleteMachine(ctx, id)
}

func (c control) DestroyApp(ctx context.Context, name string) error {
	ms, err := c.g.store.ListMachines(ctx, name)
	if err != nil {
		return err
	}
	if _, err := c.g.store.GetApp(ctx, name); err != nil {
		return err
	}
	for _, m := range ms {
		if err := c.DestroyMachine(ctx, m.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return c.g.store.DeleteApp(ctx, name)
}

// waitApplied waits until the data plane's snapshot has the app's new config
// and at least n machines, so the proxy can start them: writes reach the
// data plane through the watch, not directly.
func (g *Gateway) waitApplied(ctx context.Context, app string, config []byte, n int) error {
	for {
		snap := g.snap.Load()
		a, ok := snap.Apps[app]
		if ok && string(a.Config) == string(config) && len(snap.MachinesOf(app)) >= n {
			return nil
		}
		if err := g.waitChange(ctx, snap); err != nil {
			return fmt.Errorf("wait for app %s to reach the data plane: %w", app, err)
		}
	}
}

// waitChange blocks until the served snapshot is no longer old.
func (g *Gateway) waitChange(ctx context.Context, old *store.Snapshot) error {
	g.changedMu.Lock()
	ch := g.changed
	g.changedMu.Unlock()
	if g.snap.Load() != old {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
