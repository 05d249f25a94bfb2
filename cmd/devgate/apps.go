package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/appconfig"
	"github.com/devgate/devgate/store"
)

func runLaunch(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "launch")
	var (
		name     = fs.String("name", "", "the app's name (and its <name>.flycast host name)")
		image    = fs.String("image", "", "a container image to run (Docker driver)")
		command  = fs.String("command", "", "a command to run (process driver), e.g. \"devgate hello\"")
		flycast  = fs.Bool("flycast", false, "allocate a private Flycast address and no public one")
		port     = fs.Int("internal-port", 8080, "the port the app listens on")
		noDeploy = fs.Bool("no-deploy", false, "write fly.toml and create the app, but do not deploy")
		region   = fs.String("region", "", "primary region (default: the gateway's)")
		org      = fs.String("org", store.DefaultOrg, "the organization that owns the app")
		network  = fs.String("network", store.DefaultNetwork, "the organization's network the app lives in")
		config   = fs.String("config", "fly.toml", "where to write the app's config")
	)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("name the app with --name; it becomes <name>.flycast")
	}
	if err := store.ValidateName("app", *name); err != nil {
		return err
	}
	if _, err := os.Stat(*config); err == nil {
		return fmt.Errorf("%s already exists; deploy it with `devgate deploy`, or remove it to launch a new app", *config)
	}
	c := e.client()
	if *region == "" {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		*region = st.Region
	}
	opts := appconfig.LaunchOptions{App: *name, PrimaryRegion: *region, Image: *image, Command: *command, InternalPort: *port, Flycast: *flycast}
	if err := opts.Validate(); err != nil {
		return err
	}
	text := appconfig.Generate(opts)
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{Name: *name, Org: *org, Network: *network, Flycast: *flycast, Config: text}); err != nil {
		return err
	}
	if err := os.WriteFile(*config, text, 0o644); err != nil {
		return fmt.Errorf("app %s was created, but writing %s failed: %w; fix that and run `devgate deploy`", *name, *config, err)
	}
	fmt.Fprintf(e.stdout, "Created app '%s' in organization '%s'\nWrote config file %s\n", *name, *org, *config)
	if *noDeploy {
		fmt.Fprintln(e.stdout, "Your app is ready! Deploy with `devgate deploy`")
		return nil
	}
	return deploy(ctx, e, *config, "", false)
}

func runDeploy(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "deploy")
	var (
		config  = fs.String("config", "fly.toml", "the app's fly.toml")
		app     = fs.String("a", "", "the app (default: app in fly.toml)")
		flycast = fs.Bool("flycast", false, "allocate a Flycast address if the app has none")
	)
	fs.StringVar(app, "app", "", "the app (default: app in fly.toml)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	return deploy(ctx, e, *config, *app, *flycast)
}

func deploy(ctx context.Context, e *env, path, app string, flycast bool) error {
	text, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no %s here; run `devgate launch` first, or pass --config", path)
		}
		return err
	}
	cfg, warns, err := appconfig.Parse(path, text)
	if err != nil {
		return err
	}
	for _, w := range warns {
		fmt.Fprintf(e.stderr, "Warning: %s\n", w)
	}
	if app == "" {
		app = cfg.App
	}
	if app == "" {
		return fmt.Errorf("%s names no app; add app = \"NAME\" or pass -a NAME", path)
	}
	fmt.Fprintf(e.stdout, "==> Deploying %s\n", app)
	res, err := e.client().Deploy(ctx, app, api.DeployRequest{Config: text, Flycast: flycast})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(e.stderr, "Warning: %s\n", w)
	}
	for _, m := range res.Machines {
		fmt.Fprintf(e.stdout, "  Machine %s [app] %s\n", m.ID, m.State)
	}
	if len(res.IPs) > 0 {
		fmt.Fprintf(e.stdout, "\nVisit your newly deployed app at http://%s.flycast/ (over WireGuard)\n", app)
	}
	return nil
}

func runApps(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "usage: devgate apps list | create NAME [--org O] | destroy NAME")
		return errUsage
	}
	fs := flags(e, "apps "+args[0])
	org := fs.String("org", store.DefaultOrg, "organization (create)")
	network := fs.String("network", store.DefaultNetwork, "network (create)")
	pos, err := parse(fs, args[1:], 1)
	if err != nil {
		return err
	}
	c := e.client()
	switch args[0] {
	case "list":
		apps, err := c.ListApps(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tOWNER\tSTATUS\tLATEST DEPLOY")
		for _, a := range apps {
			status, deployed := "pending", "-"
			if a.Deployed {
				status, deployed = "deployed", "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, a.Org, status, deployed)
		}
		return tw.Flush()
	case "create":
		if len(pos) != 1 {
			return errors.New("usage: devgate apps create NAME")
		}
		a, err := c.CreateApp(ctx, api.CreateAppRequest{Name: pos[0], Org: *org, Network: *network})
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "New app created: %s\n", a.Name)
	case "destroy":
		if len(pos) != 1 {
			return errors.New("usage: devgate apps destroy NAME")
		}
		if err := c.DestroyApp(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "Destroyed app %s\n", pos[0])
	default:
		return fmt.Errorf("unknown apps command %q; use list, create or destroy", args[0])
	}
	return nil
}

func appFlag(fs interface {
	StringVar(*string, string, string, string)
}) *string {
	var s string
	fs.StringVar(&s, "a", "", "the app (default: app in ./fly.toml)")
	fs.StringVar(&s, "app", "", "the app (default: app in ./fly.toml)")
	return &s
}

// appName is -a, else the app in ./fly.toml, as flyctl does.
func appName(a string) (string, error) {
	if a != "" {
		return a, nil
	}
	text, err := os.ReadFile("fly.toml")
	if err == nil {
		if cfg, _, err := appconfig.Parse("fly.toml", text); err == nil && cfg.App != "" {
			return cfg.App, nil
		}
	}
	return "", errors.New("which app? pass -a NAME, or run this where the app's fly.toml is")
}

func runIPs(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "usage: devgate ips list | allocate-v6 --private [--org O] [--network N] | release ADDR... [-a APP]")
		return errUsage
	}
	fs := flags(e, "ips "+args[0])
	app := appFlag(fs)
	private := fs.Bool("private", false, "allocate a private (Flycast) address; the only kind devgate has")
	org := fs.String("org", "", "expose the app to this organization's network (and not its own)")
	network := fs.String("network", "", "expose the app to this network (and not its own)")
	pos, err := parse(fs, args[1:], -1)
	if err != nil {
		return err
	}
	name, err := appName(*app)
	if err != nil {
		return err
	}
	c := e.client()
	switch args[0] {
	case "list":
		ips, err := c.ListIPs(ctx, name)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tIP\tTYPE\tREGION\tCREATED AT")
		for _, ip := range ips {
			fmt.Fprintf(tw, "v6\t%s\t%s (%s/%s)\t%s\t%s\n", ip.Address, ip.Type, ip.Org, ip.Network, ip.Region, ago(ip.CreatedAt))
		}
		return tw.Flush()
	case "allocate-v6":
		if !*private {
			return errors.New("devgate has only private addresses: pass --private (public addresses need a public edge, which devgate is not)")
		}
		ip, err := c.AllocateIP(ctx, name, api.AllocateIPRequest{Org: *org, Network: *network})
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tIP\tTYPE\tREGION\tCREATED AT")
		fmt.Fprintf(tw, "v6\t%s\t%s (%s/%s)\t%s\t%s\n", ip.Address, ip.Type, ip.Org, ip.Network, ip.Region, ago(ip.CreatedAt))
		return tw.Flush()
	case "release":
		if len(pos) == 0 {
			return errors.New("name the addresses to release: devgate ips release ADDR... (see `devgate ips list`)")
		}
		for _, a := range pos {
			if err := c.ReleaseIP(ctx, name, a); err != nil {
				return fmt.Errorf("release %s: %w", a, err)
			}
			fmt.Fprintf(e.stdout, "Released %s from %s\n", a, name)
		}
		return nil
	}
	return fmt.Errorf("unknown ips command %q; use list, allocate-v6 or release", args[0])
}

func runMachine(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "usage: devgate machine list|run|start|stop|destroy [ID...] [-a APP]")
		return errUsage
	}
	fs := flags(e, "machine "+args[0])
	app := appFlag(fs)
	region := fs.String("region", "", "region for machine run")
	pos, err := parse(fs, args[1:], -1)
	if err != nil {
		return err
	}
	c := e.client()
	each := func(verb string, fn func(context.Context, string) error) error {
		if len(pos) == 0 {
			return fmt.Errorf("name the machines: devgate machine %s ID... (see `devgate machine list`)", args[0])
		}
		for _, id := range pos {
			if err := fn(ctx, id); err != nil {
				return fmt.Errorf("%s machine %s: %w", args[0], id, err)
			}
			fmt.Fprintf(e.stdout, "%s machine %s\n", verb, id)
		}
		return nil
	}
	switch args[0] {
	case "list":
		name, err := appName(*app)
		if err != nil {
			return err
		}
		ms, err := c.ListMachines(ctx, name)
		if err != nil {
			return err
		}
		return printMachines(e, ms)
	case "run":
		name, err := appName(*app)
		if err != nil {
			return err
		}
		m, err := c.RunMachine(ctx, name, api.RunMachineRequest{Region: *region})
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "Machine %s created and %s (6PN %s)\n", m.ID, m.State, m.Address)
		return nil
	case "start":
		return each("Started", c.StartMachine)
	case "stop":
		return each("Stopped", c.StopMachine)
	case "destroy":
		return each("Destroyed", c.DestroyMachine)
	}
	return fmt.Errorf("unknown machine command %q; use list, run, start, stop or destroy", args[0])
}

func printMachines(e *env, ms []store.Machine) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tREGION\tDRIVER\tIMAGE/COMMAND\tIP ADDRESS\tCREATED\tLAST UPDATED\tREASON")
	for _, m := range ms {
		what := m.Image
		if what == "" {
			what = strings.Join(m.Command, " ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.State, m.Region, m.Driver, what, m.Address, ago(m.CreatedAt), ago(m.UpdatedAt), m.Reason)
	}
	return tw.Flush()
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "status")
	app := appFlag(fs)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	name, err := appName(*app)
	if err != nil {
		return err
	}
	c := e.client()
	a, err := c.GetApp(ctx, name)
	if err != nil {
		return err
	}
	ips, err := c.ListIPs(ctx, name)
	if err != nil {
		return err
	}
	ms, err := c.ListMachines(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "App\n  Name     = %s\n  Owner    = %s\n  Network  = %s\n  Hostname = %s.flycast\n", a.Name, a.Org, a.Network, a.Name)
	for _, ip := range ips {
		fmt.Fprintf(e.stdout, "  Flycast  = %s (%s/%s)\n", ip.Address, ip.Org, ip.Network)
	}
	fmt.Fprintln(e.stdout, "\nMachines")
	return printMachines(e, ms)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String() + " ago"
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds ago", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return t.Format("Jan 2 2006 15:04")
}
