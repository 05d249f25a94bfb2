package appconfig

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// flyctlFile is shaped like a current `fly launch` file after a user's edits.
const flyctlFile = `# fly.toml app configuration file generated for hello-flycast on 2024-06-10T12:00:00Z
#
# See https://fly.io/docs/reference/configuration/ for information about how to use this file.
#

app = 'hello-flycast'
primary_region = 'ams'
kill_signal = 'SIGTERM'
kill_timeout = '10s'

[experimental]
  auto_rollback = true

[build]
  image = 'nginxdemos/hello'

[deploy]
  strategy = 'rolling'

[env]
  PORT = '80'
  WORKERS = 4

[http_service]
  internal_port = 80
  force_https = true
  auto_stop_machines = 'stop'
  auto_start_machines = true
  min_machines_running = 0
  processes = ['app']

  [http_service.concurrency]
    type = 'requests'
    hard_limit = 250
    soft_limit = 200

  [[http_service.checks]]
    interval = '30s'
    timeout = '5s'
    grace_period = '10s'
    method = 'GET'
    path = '/healthz'

[[vm]]
  memory = '1gb'
  cpu_kind = 'shared'
  cpus = 1
`

// httpOnlyFile is the shortest useful file: defaults everywhere.
const httpOnlyFile = `app = "tiny"
[http_service]
internal_port = 3000
`

// servicesFile uses [[services]] with tcp, a port range, proxy_proto, udp,
// the devgate table and tolerated tables.
const servicesFile = `app = "db-proxy"
primary_region = "fra"
kill_signal = "SIGINT"
kill_timeout = 30

[processes]
  app = "bin/server --port 5432"
  worker = "bin/worker -q 'high prio' \"x y\""

[[services]]
  protocol = "tcp"
  internal_port = 5432
  processes = ["app"]
  auto_stop_machines = false
  [services.concurrency]
    type = "connections"
    soft_limit = 50
  [[services.ports]]
    port = 5432
    handlers = ["pg_tls"]
  [[services.ports]]
    start_port = 10000
    end_port = 10010
    handlers = ["proxy_proto"]
    proxy_proto_options = { version = "v2" }
  [[services.tcp_checks]]
    interval = "15s"
    timeout = 2000
    grace_period = "1s"

[[services]]
  protocol = "udp"
  internal_port = 5353
  auto_stop_machines = "suspend"
  auto_start_machines = false
  min_machines_running = 1
  processes = ["worker"]
  [[services.ports]]
    port = 53

[mounts]
  source = "data"
  destination = "/data"

[checks]
  [checks.alive]
    type = "tcp"
    port = 5432

[devgate]
  idle_timeout = "90s"
`

func TestParseValid(t *testing.T) {
	defConc := Concurrency{Type: "connections", Soft: 20, Hard: 25}
	tests := []struct {
		name     string
		src      string
		services []Service
		check    func(t *testing.T, c *Config)
	}{
		{
			name: "flyctl generated",
			src:  flyctlFile,
			services: []Service{{
				Protocol: "tcp", InternalPort: 80,
				Ports: []Port{
					{Start: 80, End: 80, Handlers: []string{"http"}, ForceHTTPS: true},
					{Start: 443, End: 443, Handlers: []string{"tls", "http"}},
				},
				Concurrency: Concurrency{Type: "requests", Soft: 200, Hard: 250},
				AutoStop:    "stop", AutoStart: true, Processes: []string{"app"},
				Checks: []Check{{Type: "http", Interval: 30 * time.Second, Timeout: 5 * time.Second,
					GracePeriod: 10 * time.Second, Method: "GET", Path: "/healthz"}},
			}},
			check: func(t *testing.T, c *Config) {
				if c.App != "hello-flycast" || c.PrimaryRegion != "ams" || c.Build.Image != "nginxdemos/hello" {
					t.Errorf("app/region/image = %q %q %q", c.App, c.PrimaryRegion, c.Build.Image)
				}
				if c.KillSignalValue() != syscall.SIGTERM || c.KillTimeoutValue() != 10*time.Second {
					t.Errorf("kill = %v %v", c.KillSignalValue(), c.KillTimeoutValue())
				}
				if want := map[string]string{"PORT": "80", "WORKERS": "4"}; !reflect.DeepEqual(c.Env, want) {
					t.Errorf("env = %v, want %v", c.Env, want)
				}
				if len(c.VM) != 1 || c.VM[0]["memory"] != "1gb" {
					t.Errorf("vm not preserved: %v", c.VM)
				}
				if c.Deploy["strategy"] != "rolling" {
					t.Errorf("deploy not preserved: %v", c.Deploy)
				}
				if c.IdleTimeout() != 0 || c.Command("") != nil {
					t.Errorf("idle %v command %q, want unset", c.IdleTimeout(), c.Command(""))
				}
			},
		},
		{
			name: "http_service only",
			src:  httpOnlyFile,
			services: []Service{{
				Protocol: "tcp", InternalPort: 3000,
				Ports: []Port{
					{Start: 80, End: 80, Handlers: []string{"http"}},
					{Start: 443, End: 443, Handlers: []string{"tls", "http"}},
				},
				Concurrency: defConc, AutoStop: "off", AutoStart: true,
			}},
			check: func(t *testing.T, c *Config) {
				if c.KillSignalValue() != syscall.SIGINT || c.KillTimeoutValue() != 5*time.Second {
					t.Errorf("defaults: kill = %v %v, want SIGINT 5s", c.KillSignalValue(), c.KillTimeoutValue())
				}
			},
		},
		{
			name: "services tcp udp proxy_proto ranges",
			src:  servicesFile,
			services: []Service{
				{
					Protocol: "tcp", InternalPort: 5432,
					Ports: []Port{
						{Start: 5432, End: 5432, Handlers: []string{"pg_tls"}},
						{Start: 10000, End: 10010, Handlers: []string{"proxy_proto"}, ProxyProto: "v2"},
					},
					ProxyProto:  "v2",
					Concurrency: Concurrency{Type: "connections", Soft: 50, Hard: 50},
					AutoStop:    "off", AutoStart: true, Processes: []string{"app"},
					Checks: []Check{{Type: "tcp", Interval: 15 * time.Second, Timeout: 2 * time.Second, GracePeriod: time.Second}},
				},
				{
					Protocol: "udp", InternalPort: 5353,
					Ports:       []Port{{Start: 53, End: 53}},
					Concurrency: defConc, AutoStop: "suspend", AutoStart: false, MinRunning: 1,
					Processes: []string{"worker"},
				},
			},
			check: func(t *testing.T, c *Config) {
				if c.KillTimeoutValue() != 30*time.Second {
					t.Errorf("kill_timeout = %v, want 30s", c.KillTimeoutValue())
				}
				if c.IdleTimeout() != 90*time.Second {
					t.Errorf("idle_timeout = %v, want 90s", c.IdleTimeout())
				}
				if got, want := c.Command(""), []string{"bin/server", "--port", "5432"}; !reflect.DeepEqual(got, want) {
					t.Errorf("Command(\"\") = %q, want %q", got, want)
				}
				if got, want := c.Command("worker"), []string{"bin/worker", "-q", "high prio", "x y"}; !reflect.DeepEqual(got, want) {
					t.Errorf("Command(worker) = %q, want %q", got, want)
				}
				if c.Command("nope") != nil {
					t.Errorf("Command(nope) = %q, want nil", c.Command("nope"))
				}
				if c.Mounts == nil || c.Checks == nil {
					t.Errorf("mounts/checks not preserved")
				}
			},
		},
		{
			name: "inline ports and hard_limit only",
			src: `app = "x"
[[services]]
internal_port = 8080
ports = [{port = 80, handlers = ["http"], force_https = true}, {port = 443, handlers = ["tls", "http"]}]
concurrency = {hard_limit = 10}
`,
			services: []Service{{
				Protocol: "tcp", InternalPort: 8080,
				Ports: []Port{
					{Start: 80, End: 80, Handlers: []string{"http"}, ForceHTTPS: true},
					{Start: 443, End: 443, Handlers: []string{"tls", "http"}},
				},
				Concurrency: Concurrency{Type: "connections", Soft: 10, Hard: 10},
				AutoStop:    "off", AutoStart: true,
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, warns, err := Parse("fly.toml", []byte(tt.src))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(warns) != 0 {
				t.Errorf("unexpected warnings: %v", warns)
			}
			if got := c.Services(); !reflect.DeepEqual(got, tt.services) {
				t.Errorf("Services() =\n%+v\nwant\n%+v", got, tt.services)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestAutoStopForms(t *testing.T) {
	tests := []struct {
		value string
		want  string
	}{
		{"true", "stop"}, {"false", "off"}, {`"off"`, "off"}, {`'stop'`, "stop"}, {`"suspend"`, "suspend"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			src := "app = 'a'\n[http_service]\ninternal_port = 8080\nauto_stop_machines = " + tt.value + "\n"
			c, _, err := Parse("fly.toml", []byte(src))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := c.Services()[0].AutoStop; got != tt.want {
				t.Errorf("AutoStop = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string // the exact error message
		kind error
	}{
		{"internal_port zero", "app = 'a'\n\n[http_service]\n  internal_port = 0\n",
			"fly.toml:4: http_service.internal_port: must be 1..65535, got 0", ErrInvalid},
		{"port too big", "[[services]]\n[[services.ports]]\nport = 70000\n",
			"fly.toml:3: services[0].ports[0].port: must be 1..65535, got 70000", ErrInvalid},
		{"start after end", "[[services]]\n[[services.ports]]\nport = 80\n[[services.ports]]\nstart_port = 9000\nend_port = 8000\n",
			"fly.toml:5: services[0].ports[1].start_port: start_port 9000 is greater than end_port 8000", ErrInvalid},
		{"second service", "[[services]]\n[[services.ports]]\nport = 80\n[[services]]\n[[services.ports]]\nport = 1\nhandlers = ['http', 'gopher']\n",
			`fly.toml:7: services[1].ports[0].handlers[1]: unknown handler "gopher"; use http, tls, proxy_proto, pg_tls or edge_http`, ErrInvalid},
		{"concurrency type", "[http_service]\n[http_service.concurrency]\ntype = 'bytes'\n",
			`fly.toml:3: http_service.concurrency.type: must be "connections" or "requests", got "bytes"`, ErrInvalid},
		{"soft above hard", "[http_service]\n[http_service.concurrency]\nhard_limit = 10\nsoft_limit = 20\n",
			"fly.toml:4: http_service.concurrency.soft_limit: soft_limit 20 is greater than hard_limit 10", ErrInvalid},
		{"soft zero", "[http_service]\nconcurrency = { soft_limit = 0 }\n",
			"fly.toml:2: http_service.concurrency.soft_limit: must be 1..1000000, got 0", ErrInvalid},
		{"kill_signal", "kill_signal = 'SIGWINCH'\n",
			`fly.toml:1: kill_signal: unknown signal "SIGWINCH"; use SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL or SIGHUP`, ErrInvalid},
		{"kill_timeout", "app = 'a'\nkill_timeout = '5 sec'\n",
			`fly.toml:2: kill_timeout: bad duration "5 sec": use a number and a unit, like "5s" or "1m30s"`, ErrInvalid},
		{"auto_stop string", "[http_service]\nauto_stop_machines = 'sometimes'\n",
			`fly.toml:2: http_service.auto_stop_machines: must be "off", "stop", "suspend", true or false, got "sometimes"`, ErrInvalid},
		{"auto_stop int", "[[services]]\nauto_stop_machines = 1\n",
			`fly.toml:2: services[0].auto_stop_machines: must be "off", "stop", "suspend", true or false, got an integer`, ErrInvalid},
		{"idle_timeout", "[devgate]\nidle_timeout = 'soon'\n",
			`fly.toml:2: devgate.idle_timeout: bad duration "soon": use a number and a unit, like "5s" or "1m30s"`, ErrInvalid},
		{"idle_timeout integer", "[devgate]\nidle_timeout = 5\n",
			`fly.toml:2: devgate.idle_timeout: must be a duration string like "5s", got an integer`, ErrInvalid},
		{"proxy proto version", "[[services]]\n  [[services.ports]]\n    port = 5000\n    handlers = ['proxy_proto']\n    proxy_proto_options = { version = 'v3' }\n",
			`fly.toml:5: services[0].ports[0].proxy_proto_options.version: must be "v1" or "v2", got "v3"`, ErrInvalid},
		{"port and range", "[[services]]\n[[services.ports]]\nport = 80\nstart_port = 81\nend_port = 82\n",
			"fly.toml:2: services[0].ports[0]: has both port and start_port/end_port; use one or the other", ErrInvalid},
		{"no port", "[[services]]\n[[services.ports]]\nhandlers = ['http']\n",
			"fly.toml:2: services[0].ports[0]: needs port, or start_port and end_port", ErrInvalid},
		{"inline array port", "[[services]]\ninternal_port = 80\nports = [{port = 80}, {port = 0}]\n",
			"fly.toml:3: services[0].ports[1].port: must be 1..65535, got 0", ErrInvalid},
		{"unknown process group", "[processes]\nweb = 'run'\n[http_service]\nprocesses = ['app']\n",
			`fly.toml:4: http_service.processes[0]: unknown process group "app"; define it under [processes]`, ErrInvalid},
		{"bad command", "[processes]\napp = \"sh -c 'echo hi\"\n",
			"fly.toml:2: processes.app: bad command: unterminated ' quote", ErrInvalid},
		{"udp handlers", "[[services]]\nprotocol = 'udp'\n[[services.ports]]\nport = 53\nhandlers = ['http']\n",
			`fly.toml:5: services[0].ports[0].handlers: udp services take no handlers; remove them or use protocol = "tcp"`, ErrInvalid},
		{"protocol", "[[services]]\nprotocol = 'sctp'\n",
			`fly.toml:2: services[0].protocol: must be "tcp" or "udp", got "sctp"`, ErrInvalid},
		{"wrong type", "app = 5\n",
			"fly.toml:1: app: must be a string, got an integer", ErrInvalid},
		{"multiline string before error", "[processes]\napp = '''\nline = 1\n[fake]\n'''\n[http_service]\ninternal_port = -1\n",
			"fly.toml:7: http_service.internal_port: must be 1..65535, got -1", ErrInvalid},
		{"syntax", "app = 'a'\nprimary_region = \"ams\n",
			"fly.toml:2: toml syntax: strings cannot contain newlines", ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse("fly.toml", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded, want %q", tt.want)
			}
			if c != nil {
				t.Errorf("Config not nil with an error")
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("errors.Is(err, %v) = false", tt.kind)
			}
		})
	}
}

func TestParseSeveralErrors(t *testing.T) {
	src := "kill_signal = 'NOPE'\n[http_service]\ninternal_port = 0\n"
	_, _, err := Parse("x/fly.toml", []byte(src))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "x/fly.toml:1: kill_signal:") ||
		!strings.HasPrefix(lines[1], "x/fly.toml:3: http_service.internal_port:") {
		t.Errorf("errors not reported in file order:\n%s", err)
	}
	var fe *Error
	if !errors.As(err, &fe) || fe.Line != 1 || fe.Key != "kill_signal" {
		t.Errorf("errors.As: %+v", fe)
	}
}

func TestParseTooLarge(t *testing.T) {
	_, _, err := Parse("fly.toml", make([]byte, MaxFileSize+1))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
}

func TestUnknownKeysWarn(t *testing.T) {
	src := `app = 'a'
colour = 'blue'
"odd key" = 2
[http_service]
  internal_port = 8080
  bogus = true

[[services]]
  internal_port = 9
  [[services.ports]]
    port = 9
[[services]]
  internal_port = 10
  [[services.ports]]
    port = 10
    colour = 'red'

[devgate]
  idle_timeout = '1m'
  nope = 1

[mystery]
  a = 1
`
	c, warns, err := Parse("fly.toml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.IdleTimeout() != time.Minute {
		t.Errorf("idle = %v", c.IdleTimeout())
	}
	var got []string
	for _, w := range warns {
		got = append(got, w.String())
	}
	want := []string{
		"fly.toml:2: colour: unknown key, ignored",
		`fly.toml:3: "odd key": unknown key, ignored`,
		"fly.toml:6: http_service.bogus: unknown key, ignored",
		"fly.toml:16: services[1].ports[0].colour: unknown key, ignored",
		"fly.toml:20: devgate.nope: unknown key, ignored",
		"fly.toml:22: mystery: unknown key, ignored",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings\n got: %q\nwant: %q", got, want)
	}
}

func TestServicesIsACopy(t *testing.T) {
	c, _, err := Parse("fly.toml", []byte(servicesFile))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services()
	s[0].Ports[0].Handlers[0] = "changed"
	s[0].Processes[0] = "changed"
	if c.Services()[0].Ports[0].Handlers[0] != "pg_tls" || c.Services()[0].Processes[0] != "app" {
		t.Errorf("Services() shares memory with the Config")
	}
}

func BenchmarkParse(b *testing.B) {
	data := []byte(flyctlFile)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse("fly.toml", data); err != nil {
			b.Fatal(err)
		}
	}
}
