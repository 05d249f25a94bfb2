package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/gateway"
	"github.com/devgate/devgate/peers"
)

// TestMain lets this test binary be the devgate binary for machines the
// tests start: apps run "devgate hello", which resolves to os.Executable().
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "hello" {
		os.Exit(run(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// cli runs the CLI in-process and returns its exit code and output.
func cli(t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, append([]string{"--data-dir", dir}, args...), nil, &out, &errb)
	return code, out.String(), errb.String()
}

func startGateway(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := gateway.Start(ctx, gateway.Config{DataDir: dir, RandomPort: true, Endpoint: "127.0.0.1:1", UpstreamDNS: []string{}, UAPIPath: filepath.Join(dir, "wg.sock")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return dir
}

// chdir runs the test in a fresh directory (launch writes ./fly.toml).
func chdir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	t.Chdir(d)
	return d
}

func TestCLIBadInput(t *testing.T) {
	dir := startGateway(t)
	work := chdir(t)
	if code, _, errs := cli(t, dir, "wireguard", "create", "personal", "local", "laptop", "laptop.conf"); code != 0 {
		t.Fatalf("create laptop: %d %s", code, errs)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing args without a terminal", []string{"wireguard", "create", "personal"}, "missing REGION NAME FILE"},
		{"file exists", []string{"wireguard", "create", "personal", "local", "other", "laptop.conf"}, "laptop.conf already exists"},
		{"duplicate peer", []string{"wireguard", "create", "personal", "local", "laptop", "stdout"}, "exists"},
		{"unknown region", []string{"wireguard", "create", "personal", "mars", "x", "stdout"}, "regions that exist: local"},
		{"unknown org", []string{"wireguard", "create", "nosuch", "local", "x", "stdout"}, "nosuch"},
		{"bad peer name", []string{"wireguard", "create", "personal", "local", "No_Way", "stdout"}, "name"},
		{"deploy without fly.toml", []string{"deploy"}, "run `devgate launch` first"},
		{"launch without name", []string{"launch", "--command", "x"}, "--name"},
		{"public ip", []string{"ips", "allocate-v6", "-a", "x"}, "--private"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bad listen port", []string{"serve", "--listen-port", "70000"}, "1..65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := cli(t, dir, tc.args...)
			if code == 0 || !strings.Contains(out+errs, tc.want) {
				t.Errorf("exit %d, output %q %q; want non-zero and %q", code, out, errs, tc.want)
			}
		})
	}
	// Nothing stored changed: still exactly one peer, and laptop.conf intact.
	_, list, _ := cli(t, dir, "wireguard", "list", "--json")
	if n := strings.Count(list, `"public_key"`); n != 1 {
		t.Errorf("after bad input there are %d peers, want 1:\n%s", n, list)
	}
	if data, err := os.ReadFile(filepath.Join(work, "laptop.conf")); err != nil || !strings.Contains(string(data), "PrivateKey") {
		t.Errorf("laptop.conf damaged: %v %q", err, data)
	}
	// A launch over an existing fly.toml is refused and leaves it alone.
	os.WriteFile("fly.toml", []byte("app = 'mine'\n"), 0o644)
	if code, _, errs := cli(t, dir, "launch", "--name", "hello", "--command", "devgate hello"); code == 0 || !strings.Contains(errs, "already exists") {
		t.Errorf("launch over fly.toml: %d %s", code, errs)
	}
	if data, _ := os.ReadFile("fly.toml"); string(data) != "app = 'mine'\n" {
		t.Errorf("fly.toml overwritten: %q", data)
	}
	// No gateway: the error says how to start one.
	if code, _, errs := cli(t, t.TempDir(), "wireguard", "list"); code == 0 || !strings.Contains(errs, "devgate serve") {
		t.Errorf("no gateway: %d %q", code, errs)
	}
}

// TestQR decodes the printed QR code with zbarimg and compares it with the
// file written alongside.
func TestQR(t *testing.T) {
	if _, err := exec.LookPath("zbarimg"); err != nil {
		t.Skip("QR decode test skipped: zbarimg not installed (apt-get install zbar-tools)")
	}
	dir := startGateway(t)
	chdir(t)
	code, out, errs := cli(t, dir, "wireguard", "create", "personal", "local", "phone", "phone.conf", "--qr")
	if code != 0 {
		t.Fatalf("create --qr: %d %s", code, errs)
	}
	want, err := os.ReadFile("phone.conf")
	if err != nil {
		t.Fatal(err)
	}
	img := halfBlocksToImage(t, out)
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	os.WriteFile("qr.png", buf.Bytes(), 0o600)
	dec, err := exec.Command("zbarimg", "--raw", "-q", "qr.png").Output()
	if err != nil {
		t.Fatalf("zbarimg could not decode the printed QR code: %v\n%s", err, out)
	}
	got := strings.TrimSuffix(string(dec), "\n")
	if got != string(want) && got+"\n" != string(want) {
		t.Fatalf("QR decodes to\n%s\nwant\n%s", got, want)
	}
	if _, err := peers.ParseConfig("qr", []byte(got)); err != nil {
		t.Errorf("decoded QR is not a config: %v", err)
	}
}

// halfBlocksToImage turns ToSmallString's output back into pixels: each
// character cell is two modules, top and bottom, scaled up for zbar.
func halfBlocksToImage(t *testing.T, s string) image.Image {
	t.Helper()
	var rows [][]rune
	for _, line := range strings.Split(s, "\n") {
		if strings.ContainsAny(line, "█▀▄") {
			rows = append(rows, []rune(line))
		}
	}
	if len(rows) == 0 {
		t.Fatalf("no QR code in output:\n%s", s)
	}
	const scale, margin = 6, 4
	w := len(rows[0])
	img := image.NewGray(image.Rect(0, 0, (w+2*margin)*scale, (2*len(rows)+2*margin)*scale))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	set := func(x, y int) {
		for dy := 0; dy < scale; dy++ {
			for dx := 0; dx < scale; dx++ {
				img.SetGray((x+margin)*scale+dx, (y+margin)*scale+dy, color.Gray{0})
			}
		}
	}
	// ToSmallString(false) draws light modules as blocks on a dark
	// terminal; dark modules are the blank halves.
	for y, row := range rows {
		for x, r := range row {
			top, bottom := true, true // dark unless drawn
			switch r {
			case '█':
				top, bottom = false, false
			case '▀':
				top = false
			case '▄':
				bottom = false
			}
			if top {
				set(x, 2*y)
			}
			if bottom {
				set(x, 2*y+1)
			}
		}
	}
	return img
}

// TestDemo runs the README's first command, once through.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("demo skipped in -short mode")
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if code := run(ctx, []string{"demo", "--once", "--listen-port", "0"}, nil, &out, &errb); code != 0 {
		t.Fatalf("demo exited %d\n%s\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"hello.flycast.  60  IN  AAAA  fdaa:", "reply from", "cold: this request wakes a machine", "200 OK", "asleep again"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRemoteAPI drives a gateway over its TCP API, as a remote CLI does.
func TestRemoteAPI(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := gateway.Start(ctx, gateway.Config{DataDir: dir, RandomPort: true, UpstreamDNS: []string{}, UAPIPath: filepath.Join(dir, "wg.sock"), APIAddr: addr, APIToken: "s3cret-token"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	elsewhere := t.TempDir() // no socket here: only TCP can reach the gateway
	if code, out, errs := cli(t, elsewhere, "--api-addr", addr, "--api-token", "s3cret-token", "orgs", "list"); code != 0 || !strings.Contains(out, "personal") {
		t.Errorf("orgs list over TCP: %d %q %q", code, out, errs)
	}
	code, _, errs := cli(t, elsewhere, "--api-addr", addr, "--api-token", "wrong", "orgs", "list")
	if code == 0 || !strings.Contains(errs, "--api-token") || strings.Contains(errs, "s3cret") {
		t.Errorf("wrong token: %d %q; want a refusal that names --api-token and not the token", code, errs)
	}
}
