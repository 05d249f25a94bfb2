// Command devgate is the devgate CLI: flyctl's verbs for a self-hosted
// Flycast. `devgate serve` runs the gateway; every other verb talks to it
// through its API, or (dig, proxy) through a userspace WireGuard tunnel.
//
// This package only parses arguments and prints; the work is in gateway,
// api and client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/devgate/devgate/api"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errUsage means the usage was already printed.
var errUsage = errors.New("usage")

type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what every command gets: where the gateway is and where to print.
type env struct {
	stdout, stderr io.Writer
	stdin          *os.File
	dataDir        string
	apiAddr        string
	apiToken       string
}

func (e *env) client() *api.Client {
	if e.apiAddr != "" {
		return api.NewTCPClient(e.apiAddr, e.apiToken)
	}
	return api.NewUnixClient(e.dataDir)
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"serve":     {"run the gateway (WireGuard on UDP 51820, embedded state)", runServe},
		"demo":      {"run the whole Flycast walkthrough in one process, no root", runDemo},
		"hello":     {"serve the hello page (a stand-in for nginxdemos/hello)", runHello},
		"orgs":      {"create and list organizations", runOrgs},
		"wireguard": {"create, list and remove WireGuard peers", runWireguard},
		"launch":    {"create an app and write its fly.toml", runLaunch},
		"deploy":    {"deploy the app in ./fly.toml", runDeploy},
		"apps":      {"list, create and destroy apps", runApps},
		"ips":       {"list, allocate and release Flycast addresses", runIPs},
		"machine":   {"list, run, start, stop and destroy machines", runMachine},
		"status":    {"show an app's machines and addresses", runStatus},
		"dig":       {"look up a name through the tunnel (userspace, no root)", runDig},
		"proxy":     {"forward a local port through the tunnel (userspace, no root)", runProxy},
		"version": {"print the version", func(_ context.Context, e *env, _ []string) error {
			fmt.Fprintln(e.stdout, "devgate", version)
			return nil
		}},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, stdin: stdin, dataDir: defaultDataDir(), apiAddr: os.Getenv("DEVGATE_API_ADDR"), apiToken: os.Getenv("DEVGATE_API_TOKEN")}
	// Global flags may come before the verb: devgate --data-dir D wireguard
	// list, or devgate --api-addr H:P --api-token T orgs list.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		name, val, ok := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		if name == "h" || name == "help" {
			usage(stderr)
			return 0
		}
		if !ok {
			if len(args) < 2 {
				fmt.Fprintf(stderr, "devgate: flag --%s needs a value\n", name)
				return 2
			}
			val, args = args[1], args[1:]
		}
		args = args[1:]
		switch name {
		case "data-dir":
			e.dataDir = val
		case "api-addr":
			e.apiAddr = val
		case "api-token":
			e.apiToken = val
		default:
			fmt.Fprintf(stderr, "devgate: unknown flag --%s before the command; see `devgate help`\n", name)
			return 2
		}
	}
	if len(args) == 0 || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "devgate: unknown command %q; see `devgate help`\n", args[0])
		return 2
	}
	if err := cmd.run(ctx, e, args[1:]); err != nil {
		if errors.Is(err, errUsage) {
			return 2
		}
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "devgate: a self-hosted Flycast. Usage: devgate <command> [flags]")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEvery command takes --data-dir (or DEVGATE_DATA_DIR; default ~/.devgate), --api-addr and --api-token\n(a gateway's TCP API; DEVGATE_API_ADDR, DEVGATE_API_TOKEN) and -h.")
}

func defaultDataDir() string {
	if d := os.Getenv("DEVGATE_DATA_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".devgate"
	}
	return filepath.Join(home, ".devgate")
}

// flags makes a flag set for a command, with the flags every command takes.
func flags(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("devgate "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&e.dataDir, "data-dir", e.dataDir, "the gateway's data dir (env DEVGATE_DATA_DIR)")
	fs.StringVar(&e.apiAddr, "api-addr", e.apiAddr, "the API's TCP address: serve listens there, other commands connect to it (env DEVGATE_API_ADDR)")
	fs.StringVar(&e.apiToken, "api-token", e.apiToken, "the bearer token for the TCP API (env DEVGATE_API_TOKEN)")
	return fs
}

// parse parses flags anywhere among the arguments, as flyctl accepts them:
// `wireguard create personal local laptop --network x`. It returns the
// positional arguments, and checks there are at most max of them.
func parse(fs *flag.FlagSet, args []string, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if max >= 0 && len(pos) > max {
		fmt.Fprintf(fs.Output(), "%s: too many arguments: %s\n", fs.Name(), strings.Join(pos[max:], " "))
		return nil, errUsage
	}
	return pos, nil
}
