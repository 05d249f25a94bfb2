package appconfig

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
)

// Bounds on values a fly.toml can set. fly.toml arrives over the API, so
// each number the proxy acts on is capped.
const (
	// maxKillTimeout: Fly caps kill_timeout at 5 minutes on shared hosts;
	// 24h tolerates every real file while bounding how long a stop can hang.
	maxKillTimeout = 24 * time.Hour
	// maxIdleTimeout bounds [devgate] idle_timeout; a week is "never" in
	// practice.
	maxIdleTimeout = 7 * 24 * time.Hour
	// maxCheckDuration bounds check intervals, timeouts and grace periods.
	maxCheckDuration = time.Hour
	// maxConcurrencyLimit bounds soft_limit and hard_limit, which size the
	// proxy's per-machine accounting.
	maxConcurrencyLimit = 1_000_000
	// maxMinMachines bounds min_machines_running.
	maxMinMachines = 1000
)

var killSignals = map[string]syscall.Signal{
	"SIGINT":  syscall.SIGINT,
	"SIGTERM": syscall.SIGTERM,
	"SIGQUIT": syscall.SIGQUIT,
	"SIGUSR1": syscall.SIGUSR1,
	"SIGUSR2": syscall.SIGUSR2,
	"SIGKILL": syscall.SIGKILL,
	"SIGHUP":  syscall.SIGHUP,
}

var knownHandlers = map[string]bool{
	"http": true, "tls": true, "proxy_proto": true, "pg_tls": true, "edge_http": true,
}

// Parse reads a fly.toml. filename is used only in messages. Unknown keys
// are returned as warnings; every invalid value is an *Error (several are
// joined with errors.Join) wrapping ErrSyntax, ErrInvalid or ErrTooLarge.
// A nil Config is returned with any error.
func Parse(filename string, data []byte) (*Config, []Warning, error) {
	if len(data) > MaxFileSize {
		return nil, nil, &Error{File: filename, kind: ErrTooLarge,
			Msg: fmt.Sprintf("file is %d bytes, over the %d byte limit; is this really a fly.toml?", len(data), MaxFileSize)}
	}
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, nil, &Error{File: filename, Line: pe.Position.Line, Msg: "toml syntax: " + pe.Message, kind: ErrSyntax}
		}
		return nil, nil, &Error{File: filename, Msg: "toml: " + err.Error(), kind: ErrSyntax}
	}
	d := &decoder{file: filename, lines: indexLines(string(data))}
	c := &Config{}
	p := &parser{d: d, c: c}
	p.top(raw)
	p.checkProcesses()
	if len(d.errs) > 0 {
		if len(d.errs) == 1 {
			return nil, d.warns, d.errs[0]
		}
		return nil, d.warns, errors.Join(d.errs...)
	}
	return c, d.warns, nil
}

type parser struct {
	d *decoder
	c *Config
	// refs are service processes lists, checked once [processes] is known
	// (it may come later in the file).
	refs []procRef
}

type procRef struct {
	path  string
	names []string
}

func (p *parser) top(raw map[string]any) {
	d, c := p.d, p.c
	setStr := func(dst *string) field {
		return func(path string, v any) {
			if s, ok := d.str(path, v); ok {
				*dst = s
			}
		}
	}
	d.table("", raw, map[string]field{
		"app":            setStr(&c.App),
		"primary_region": setStr(&c.PrimaryRegion),
		"kill_signal":    p.killSignal,
		"kill_timeout": func(path string, v any) {
			if t, ok := d.duration(path, v, time.Second, maxKillTimeout); ok {
				c.KillTimeout = t
			}
		},
		"build":        p.build,
		"processes":    p.processes,
		"env":          p.env,
		"http_service": p.httpService,
		"services":     p.services,
		"devgate":      p.devgate,
		"vm": func(path string, v any) {
			if t, ok := d.tables(path, v); ok {
				c.VM = t
			}
		},
		"checks": func(path string, v any) {
			if t, ok := d.tbl(path, v); ok {
				c.Checks = t
			}
		},
		"deploy": func(path string, v any) {
			if t, ok := d.tbl(path, v); ok {
				c.Deploy = t
			}
		},
		"mounts": func(_ string, v any) { c.Mounts = v },
		// Fly keys devgate has no use for.
		"experimental": ignored, "statics": ignored, "metrics": ignored, "files": ignored,
		"restart": ignored, "swap_size_mb": ignored, "console_command": ignored,
		"host_dedication_id": ignored, "http_checks": ignored,
	})
}

func (p *parser) killSignal(path string, v any) {
	s, ok := p.d.str(path, v)
	if !ok {
		return
	}
	up := strings.ToUpper(s)
	sig, ok := killSignals[up]
	if !ok {
		p.d.fail(path, "unknown signal %q; use SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL or SIGHUP", s)
		return
	}
	p.c.KillSignal, p.c.killSignal = up, sig
}

func (p *parser) build(path string, v any) {
	m, ok := p.d.tbl(path, v)
	if !ok {
		return
	}
	b := &p.c.Build
	p.d.table(path, m, map[string]field{
		"image": func(path string, v any) {
			if s, ok := p.d.str(path, v); ok {
				b.Image = s
			}
		},
		"dockerfile": func(path string, v any) {
			if s, ok := p.d.str(path, v); ok {
				b.Dockerfile = s
			}
		},
		"builder": ignored, "builtin": ignored, "buildpacks": ignored, "args": ignored,
		"settings": ignored, "build-target": ignored, "ignorefile": ignored,
	})
}

func (p *parser) processes(path string, v any) {
	m, ok := p.d.tbl(path, v)
	if !ok {
		return
	}
	p.c.Processes = make(map[string]string, len(m))
	p.c.commands = make(map[string][]string, len(m))
	fields := make(map[string]field, len(m))
	for name := range m {
		fields[name] = func(path string, v any) {
			s, ok := p.d.str(path, v)
			if !ok {
				return
			}
			argv, err := splitCommand(s)
			if err != nil {
				p.d.fail(path, "bad command: %v", err)
				return
			}
			p.c.Processes[name] = s
			p.c.commands[name] = argv
		}
	}
	p.d.table(path, m, fields)
}

func (p *parser) env(path string, v any) {
	m, ok := p.d.tbl(path, v)
	if !ok {
		return
	}
	p.c.Env = make(map[string]string, len(m))
	fields := make(map[string]field, len(m))
	for name := range m {
		fields[name] = func(path string, v any) {
			if s, ok := p.d.scalarString(path, v); ok {
				p.c.Env[name] = s
			}
		}
	}
	p.d.table(path, m, fields)
}

func (p *parser) devgate(path string, v any) {
	m, ok := p.d.tbl(path, v)
	if !ok {
		return
	}
	p.d.table(path, m, map[string]field{
		"idle_timeout": func(path string, v any) {
			if t, ok := p.d.duration(path, v, 0, maxIdleTimeout); ok {
				p.c.Devgate.IdleTimeout = t
			}
		},
	})
}

// checkProcesses reports services that name a process group [processes]
// does not define. Without [processes] the only group is "app".
func (p *parser) checkProcesses() {
	for _, r := range p.refs {
		for i, name := range r.names {
			if _, ok := p.c.Processes[name]; ok {
				continue
			}
			if len(p.c.Processes) == 0 && name == DefaultProcessGroup {
				continue
			}
			p.d.fail(fmt.Sprintf("%s[%d]", r.path, i),
				"unknown process group %q; define it under [processes]", name)
		}
	}
}
