package appconfig

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestGenerateRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		o    LaunchOptions
	}{
		{"image only", LaunchOptions{App: "hello", PrimaryRegion: "ams", Image: "nginxdemos/hello", InternalPort: 80}},
		{"flycast with command", LaunchOptions{App: "api", PrimaryRegion: "fra", Command: `python3 -m http.server 8080`, Flycast: true}},
		{"quotes in command", LaunchOptions{App: "q", PrimaryRegion: "sjc", Command: `sh -c 'echo "hi" \\ there'`, InternalPort: 9000, Flycast: true}},
		{"nothing optional", LaunchOptions{App: "bare"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.o.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			out := Generate(tt.o)
			c, warns, err := Parse("fly.toml", out)
			if err != nil {
				t.Fatalf("Parse(Generate) failed: %v\n%s", err, out)
			}
			if len(warns) != 0 {
				t.Errorf("warnings: %v", warns)
			}
			if c.App != tt.o.App || c.PrimaryRegion != tt.o.PrimaryRegion || c.Build.Image != tt.o.Image {
				t.Errorf("got app %q region %q image %q", c.App, c.PrimaryRegion, c.Build.Image)
			}
			if c.Processes["app"] != tt.o.Command {
				t.Errorf("processes.app = %q, want %q", c.Processes["app"], tt.o.Command)
			}
			wantArgv, _ := splitCommand(tt.o.Command)
			if !reflect.DeepEqual(c.Command(""), wantArgv) {
				t.Errorf("Command = %q, want %q", c.Command(""), wantArgv)
			}
			port := tt.o.InternalPort
			if port == 0 {
				port = 8080
			}
			svcs := c.Services()
			if len(svcs) != 1 {
				t.Fatalf("services = %d, want 1", len(svcs))
			}
			s := svcs[0]
			if s.InternalPort != port || s.AutoStop != "stop" || !s.AutoStart || s.MinRunning != 0 ||
				!reflect.DeepEqual(s.Processes, []string{"app"}) {
				t.Errorf("service = %+v", s)
			}
			if s.Ports[0].ForceHTTPS == tt.o.Flycast {
				t.Errorf("force_https = %v with Flycast = %v", s.Ports[0].ForceHTTPS, tt.o.Flycast)
			}
			if len(c.VM) != 1 || c.VM[0]["memory"] != "1gb" || c.VM[0]["cpu_kind"] != "shared" || c.VM[0]["cpus"] != int64(1) {
				t.Errorf("vm = %v", c.VM)
			}
		})
	}
}

// Flycast is plain HTTP: a generated Flycast file must never redirect.
func TestFlycastNeverForcesHTTPS(t *testing.T) {
	forceTrue := regexp.MustCompile(`(?m)^\s*force_https\s*=\s*true`)
	for _, o := range []LaunchOptions{
		{App: "a", Flycast: true},
		{App: "b", PrimaryRegion: "ams", Image: "img", Command: "run --https", InternalPort: 443, Flycast: true},
		{App: "force_https = true", Flycast: true},
	} {
		out := Generate(o)
		if forceTrue.Match(out) {
			t.Errorf("Flycast file has force_https = true:\n%s", out)
		}
		if !strings.Contains(string(out), "force_https = false") {
			t.Errorf("Flycast file lacks force_https = false:\n%s", out)
		}
		c, _, err := Parse("fly.toml", out)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		for _, s := range c.Services() {
			for _, p := range s.Ports {
				if p.ForceHTTPS {
					t.Errorf("parsed Flycast file forces https on port %d", p.Start)
				}
			}
		}
	}
	if !forceTrue.Match(Generate(LaunchOptions{App: "public"})) {
		t.Errorf("a public app should get fly launch's force_https = true")
	}
}

func TestGenerateShape(t *testing.T) {
	got := string(Generate(LaunchOptions{App: "hello", PrimaryRegion: "ams", Image: "nginxdemos/hello", InternalPort: 80, Flycast: true}))
	want := `# fly.toml app configuration file generated for hello by devgate launch
#
# See https://fly.io/docs/reference/configuration/ for information about how to use this file.
#

app = 'hello'
primary_region = 'ams'

[build]
  image = 'nginxdemos/hello'

[http_service]
  internal_port = 80
  force_https = false
  auto_stop_machines = 'stop'
  auto_start_machines = true
  min_machines_running = 0
  processes = ['app']

[[vm]]
  memory = '1gb'
  cpu_kind = 'shared'
  cpus = 1
`
	if got != want {
		t.Errorf("Generate =\n%s\nwant\n%s", got, want)
	}
}

func TestLaunchOptionsValidate(t *testing.T) {
	for _, o := range []LaunchOptions{
		{},
		{App: "a", InternalPort: 70000},
		{App: "a", Command: "echo 'unterminated"},
		{App: "a\xff"},
	} {
		if o.Validate() == nil {
			t.Errorf("Validate(%+v) = nil, want an error", o)
		}
	}
}
