package appconfig

import (
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		flyctlFile, httpOnlyFile, servicesFile,
		string(Generate(LaunchOptions{App: "a", PrimaryRegion: "ams", Command: "run 'x y'", Flycast: true})),
		"[[services]]\nports = [{port = 80}, {start_port = 1, end_port = 2}]\n",
		"a = '''\n[x]\n'''\nb = \"\"\"q\"\"\"\"\n[[services]]\n[[services.ports]]\nport = 1\n",
		"[http_service]\nconcurrency = {soft_limit = 30}\nauto_stop_machines = true\n",
		"x = [[[1]], [[2]]]\n",
		"[processes]\napp = \"a\\\\ b 'c\"\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, warns, err := Parse("fly.toml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("Config returned with error %v", err)
			}
			return
		}
		for _, w := range warns {
			if w.Key == "" || w.Msg == "" {
				t.Fatalf("warning without key or message: %+v", w)
			}
		}
		for _, s := range c.Services() {
			for _, p := range s.Ports {
				if p.Start < 1 || p.End > 65535 || p.Start > p.End {
					t.Fatalf("accepted bad port range %d-%d", p.Start, p.End)
				}
			}
			if s.Concurrency.Soft < 1 || s.Concurrency.Soft > s.Concurrency.Hard {
				t.Fatalf("accepted bad concurrency %+v", s.Concurrency)
			}
			switch s.AutoStop {
			case "off", "stop", "suspend":
			default:
				t.Fatalf("AutoStop %q", s.AutoStop)
			}
		}
		c.Command("")
		c.KillSignalValue()
		c.KillTimeoutValue()
	})
}

// FuzzIndexLines checks the line indexer alone, which runs on text the TOML
// parser accepted but must survive anything.
func FuzzIndexLines(f *testing.F) {
	f.Add(servicesFile)
	f.Add("[[a]]\n[[a.b]]\nk = { x = [1, {y = 2}] }\n")
	f.Add("'''\n")
	f.Fuzz(func(t *testing.T, s string) {
		for path, line := range indexLines(s) {
			if line < 1 {
				t.Fatalf("%s at line %d", path, line)
			}
		}
	})
}
