package appconfig

import (
	"slices"
	"syscall"
	"time"
)

// Defaults Fly applies when a key is absent.
const (
	DefaultKillTimeout  = 5 * time.Second
	DefaultInternalPort = 8080
	DefaultSoftLimit    = 20
	DefaultHardLimit    = 25
	DefaultProcessGroup = "app"
)

// Config is a parsed fly.toml. Fields hold values with defaults applied where
// the field's comment says so; use the methods for the values Fly would use.
type Config struct {
	App           string
	PrimaryRegion string
	// KillSignal as written (upper-cased), "" when absent.
	KillSignal string
	// KillTimeout as written, 0 when absent.
	KillTimeout time.Duration
	Build       Build
	// Processes maps a process group to its command line, as written.
	Processes map[string]string
	// Env holds [env]; numbers and booleans are converted to strings, as
	// flyctl does.
	Env map[string]string
	// HTTPService is [http_service], nil when absent.
	HTTPService *HTTPService
	// ServiceSections are the [[services]] entries, defaults applied.
	ServiceSections []Service
	// Devgate is the devgate-only [devgate] table.
	Devgate Devgate

	// Tolerated tables devgate does not act on, kept as decoded.
	VM     []map[string]any
	Checks map[string]any
	Deploy map[string]any
	Mounts any

	killSignal syscall.Signal
	commands   map[string][]string
}

// Build is [build].
type Build struct {
	Image      string
	Dockerfile string
}

// Devgate is the devgate extension table [devgate]; flyctl ignores it.
type Devgate struct {
	// IdleTimeout is how long a machine may have no connection and move no
	// bytes before auto-stop stops it. 0 means not set (the proxy's default).
	IdleTimeout time.Duration
}

// HTTPService is [http_service], defaults applied.
type HTTPService struct {
	InternalPort int
	ForceHTTPS   bool
	AutoStop     string // "off" | "stop" | "suspend"
	AutoStart    bool
	MinRunning   int
	Processes    []string
	Concurrency  Concurrency
	Checks       []Check
}

// Service is one proxied service in the form the proxy uses.
type Service struct {
	Protocol     string // "tcp" | "udp"
	InternalPort int
	Ports        []Port
	// ProxyProto is the PROXY protocol version of the first port that uses
	// the proxy_proto handler: "" (none), "v1" or "v2". Port.ProxyProto is
	// the per-port value.
	ProxyProto  string
	Concurrency Concurrency
	AutoStop    string // "off" | "stop" | "suspend"
	AutoStart   bool
	MinRunning  int
	// Processes the service routes to; empty means every group, as Fly.
	Processes []string
	Checks    []Check
}

// Port is a public port or port range of a Service.
type Port struct {
	Start, End int // equal for a single port
	Handlers   []string
	ForceHTTPS bool
	ProxyProto string // "" | "v1" | "v2"
}

// Concurrency is a service's load limits.
type Concurrency struct {
	Type string // "connections" | "requests"
	Soft int
	Hard int
}

// Check is a service health check. Durations are 0 when not written.
type Check struct {
	Type          string // "tcp" | "http"
	Interval      time.Duration
	Timeout       time.Duration
	GracePeriod   time.Duration
	Method        string
	Path          string
	Protocol      string
	TLSSkipVerify bool
	Headers       map[string]string
}

// KillSignalValue is the signal that stops a machine (default SIGINT, as Fly).
func (c *Config) KillSignalValue() syscall.Signal {
	if c.killSignal == 0 {
		return syscall.SIGINT
	}
	return c.killSignal
}

// KillTimeoutValue is how long to wait after the kill signal (default 5s).
func (c *Config) KillTimeoutValue() time.Duration {
	if c.KillTimeout == 0 {
		return DefaultKillTimeout
	}
	return c.KillTimeout
}

// IdleTimeout is [devgate] idle_timeout; 0 when not set.
func (c *Config) IdleTimeout() time.Duration { return c.Devgate.IdleTimeout }

// Command returns the argv of a process group's command ("" means "app"),
// split with simple shell quoting. It returns nil when the group has no
// command, in which case the image's own command runs.
func (c *Config) Command(group string) []string {
	if group == "" {
		group = DefaultProcessGroup
	}
	return slices.Clone(c.commands[group])
}

// Services returns the normalised services: [http_service] first (port 80
// with handlers ["http"], port 443 with ["tls", "http"]), then [[services]].
// The result is a deep copy the caller may change.
func (c *Config) Services() []Service {
	var out []Service
	if h := c.HTTPService; h != nil {
		out = append(out, Service{
			Protocol:     "tcp",
			InternalPort: h.InternalPort,
			Ports: []Port{
				{Start: 80, End: 80, Handlers: []string{"http"}, ForceHTTPS: h.ForceHTTPS},
				{Start: 443, End: 443, Handlers: []string{"tls", "http"}},
			},
			Concurrency: h.Concurrency,
			AutoStop:    h.AutoStop,
			AutoStart:   h.AutoStart,
			MinRunning:  h.MinRunning,
			Processes:   slices.Clone(h.Processes),
			Checks:      cloneChecks(h.Checks),
		})
	}
	for _, s := range c.ServiceSections {
		s.Ports = slices.Clone(s.Ports)
		for i := range s.Ports {
			s.Ports[i].Handlers = slices.Clone(s.Ports[i].Handlers)
		}
		s.Processes = slices.Clone(s.Processes)
		s.Checks = cloneChecks(s.Checks)
		out = append(out, s)
	}
	return out
}

func cloneChecks(in []Check) []Check {
	if in == nil {
		return nil
	}
	out := slices.Clone(in)
	for i := range out {
		if out[i].Headers != nil {
			h := make(map[string]string, len(out[i].Headers))
			for k, v := range out[i].Headers {
				h[k] = v
			}
			out[i].Headers = h
		}
	}
	return out
}
