package flycast

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/devgate/devgate/machines"
	"github.com/devgate/devgate/store"
	"github.com/prometheus/client_golang/prometheus"
)

// App is the proxy's view of one app's fly.toml. The caller converts
// fly.toml into it; flycast never parses fly.toml itself.
type App struct {
	Name, Org, Network string
	Services           []Service
	// AutoStop is "off", "stop" or "suspend" ("suspend" is treated as "stop":
	// drivers cannot snapshot memory).
	AutoStop string
	// AutoStart lets a connection wake a stopped machine.
	AutoStart bool
	// MinRunning is the number of started machines auto-stop never goes below.
	MinRunning int
	// IdleTimeout is how long a machine must be idle before auto-stop; 0
	// means Config.IdleTimeout.
	IdleTimeout time.Duration
	// Machine is how to start the app's machines.
	Machine MachineTemplate
}

// MachineTemplate is what a machine runs. Empty Command and Image fall back
// to the machine's own record.
type MachineTemplate struct {
	Command     []string
	Image       string
	Env         map[string]string
	KillSignal  syscall.Signal
	KillTimeout time.Duration
}

// Service is one [[services]] (or [http_service]) block.
type Service struct {
	InternalPort int
	Ports        []Port
	// ProxyProto is "", "v1" or "v2"; with the "proxy_proto" handler, ""
	// means v1. A non-empty value alone also enables the header.
	ProxyProto  string
	Concurrency Concurrency
}

// Port is a range of public ports (Start..End, End 0 meaning Start) and its
// handlers.
type Port struct {
	Start, End int
	Handlers   []string
	ForceHTTPS bool
}

// Concurrency are a service's load limits. Load is open connections for
// "connections" and in-flight requests for "requests"; with the http handler
// both count in-flight requests, since each holds one backend connection.
// A zero limit means no limit.
type Concurrency struct {
	Type       string
	Soft, Hard int
}

// MachineStore persists machine state transitions. *store.Store implements it.
type MachineStore interface {
	UpdateMachine(ctx context.Context, id string, fn func(*store.Machine) error) (store.Machine, error)
}

// Config configures a Proxy. Zero durations and sizes take the defaults.
type Config struct {
	// Region is this gateway's region: machines here are preferred, and it
	// is sent as Fly-Region.
	Region string
	// Drivers run machines, by store.Machine.Driver.
	Drivers map[string]machines.Driver
	// Store persists state transitions.
	Store MachineStore
	// IdleTimeout is how long a machine must have no connection and no
	// bytes before auto-stop stops it (default 5m).
	IdleTimeout time.Duration
	// WakeTimeout bounds one wake: start plus readiness (default 60s).
	WakeTimeout time.Duration
	// QueueTimeout is how long a connection waits when every machine is at
	// its hard limit (default 10s).
	QueueTimeout time.Duration
	// MaxQueue bounds the waiters per app (default 256).
	MaxQueue int
	// LogDir holds machine logs, LogDir/<id>.log; empty means no log file.
	LogDir string
	// Registerer receives the proxy's metrics when set.
	Registerer prometheus.Registerer
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// Defaults.
const (
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultWakeTimeout  = 60 * time.Second
	DefaultQueueTimeout = 10 * time.Second
	DefaultMaxQueue     = 256
)

// Sentinel errors, for callers to test with errors.Is.
var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("flycast proxy is closed")
	// ErrAutoStartOff: nothing is started and auto_start_machines is off.
	ErrAutoStartOff = errors.New("no started machines and auto_start_machines is off")
	// ErrNoMachines: the app has no machine that could serve or be started.
	ErrNoMachines = errors.New("no machines to start")
	// ErrWakeFailed: starting a machine failed.
	ErrWakeFailed = errors.New("machine failed to start")
	// ErrQueueFull: every machine is at its hard limit and the queue is full.
	ErrQueueFull = errors.New("every machine is at its hard_limit and the wait queue is full")
	// ErrQueueTimeout: waited QueueTimeout for a machine below its hard limit.
	ErrQueueTimeout = errors.New("every machine stayed at its hard_limit for the queue timeout")
	// ErrUnknownMachine: no such machine in the current snapshot.
	ErrUnknownMachine = errors.New("unknown machine")
	// ErrNoDriver: the machine names a driver the proxy does not have.
	ErrNoDriver = errors.New("no such machine driver")
)

func (c *Config) setDefaults() {
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.WakeTimeout <= 0 {
		c.WakeTimeout = DefaultWakeTimeout
	}
	if c.QueueTimeout <= 0 {
		c.QueueTimeout = DefaultQueueTimeout
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// idleTimeout is the app's effective idle period.
func (p *Proxy) idleTimeout(a *App) time.Duration {
	if a.IdleTimeout > 0 {
		return a.IdleTimeout
	}
	return p.cfg.IdleTimeout
}
