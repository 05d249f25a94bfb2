package appconfig

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// LaunchOptions are the answers `devgate launch` has when it writes a new
// fly.toml.
type LaunchOptions struct {
	App           string
	PrimaryRegion string
	Image         string // [build] image; omitted when ""
	Command       string // [processes] app; omitted when ""
	InternalPort  int    // 0 means 8080, as fly launch
	// Flycast writes force_https = false: Flycast is plain HTTP inside the
	// private network, where a redirect to https would break every request.
	Flycast bool
}

// Validate reports options that would make Generate write a file that Parse
// rejects.
func (o LaunchOptions) Validate() error {
	var errs []error
	if o.App == "" {
		errs = append(errs, errors.New("app name is empty; pass one"))
	}
	if o.InternalPort < 0 || o.InternalPort > 65535 {
		errs = append(errs, fmt.Errorf("internal port must be 1..65535, got %d", o.InternalPort))
	}
	for _, f := range []string{o.App, o.PrimaryRegion, o.Image, o.Command} {
		if !utf8.ValidString(f) {
			errs = append(errs, fmt.Errorf("%q is not valid UTF-8", f))
		}
	}
	if _, err := splitCommand(o.Command); err != nil {
		errs = append(errs, fmt.Errorf("command %q: %w", o.Command, err))
	}
	return errors.Join(errs...)
}

// Generate writes a fly.toml in the shape `fly launch` writes: a comment
// header, app, primary_region, [build], [processes] when a command is set,
// [http_service] and one [[vm]]. The header carries no date, so the output
// is a pure function of o. Parse(Generate(o)) round-trips for options that
// pass Validate.
func Generate(o LaunchOptions) []byte {
	port := o.InternalPort
	if port == 0 {
		port = DefaultInternalPort
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# fly.toml app configuration file generated for %s by devgate launch\n", oneLine(o.App))
	b.WriteString("#\n# See https://fly.io/docs/reference/configuration/ for information about how to use this file.\n#\n\n")
	fmt.Fprintf(&b, "app = %s\n", quote(o.App))
	fmt.Fprintf(&b, "primary_region = %s\n", quote(o.PrimaryRegion))
	b.WriteString("\n[build]\n")
	if o.Image != "" {
		fmt.Fprintf(&b, "  image = %s\n", quote(o.Image))
	}
	if o.Command != "" {
		fmt.Fprintf(&b, "\n[processes]\n  app = %s\n", quote(o.Command))
	}
	b.WriteString("\n[http_service]\n")
	fmt.Fprintf(&b, "  internal_port = %d\n", port)
	// fly launch turns force_https on for public apps. A Flycast app must
	// never have it: the redirect target has no certificate in the private
	// network. The literal is chosen here, in one place, and tested.
	forceHTTPS := "true"
	if o.Flycast {
		forceHTTPS = "false"
	}
	fmt.Fprintf(&b, "  force_https = %s\n", forceHTTPS)
	b.WriteString("  auto_stop_machines = 'stop'\n")
	b.WriteString("  auto_start_machines = true\n")
	b.WriteString("  min_machines_running = 0\n")
	b.WriteString("  processes = ['app']\n")
	b.WriteString("\n[[vm]]\n  memory = '1gb'\n  cpu_kind = 'shared'\n  cpus = 1\n")
	return b.Bytes()
}

// quote writes a TOML string the way flyctl does, in single quotes, falling
// back to a basic string when the value holds a quote or control character.
func quote(s string) string {
	if !strings.ContainsAny(s, "'\n\r\x7f") && !hasControl(s) {
		return "'" + s + "'"
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 && r != '\t' {
			return true
		}
	}
	return false
}

// oneLine keeps a value from breaking out of the comment header.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
