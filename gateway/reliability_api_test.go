package gateway

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// logCapture keeps every log line of a gateway, so a test can assert that a
// secret never appears in them.
type logCapture struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (l *logCapture) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *logCapture) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestControlAPISecurity: the unix socket is 0600 in a 0700 data dir (made
// so even if it was created wider), the gateway key is 0600, the TCP API
// wants the bearer token, a refusal is logged without the presented or the
// real token, and neither the token nor the gateway's private key is ever
// logged.
func TestControlAPISecurity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil { // too open; Start must fix it
		t.Fatal(err)
	}
	const token = "s3cret-token-7f1d2c0b9a"
	logs := &logCapture{t: t}
	addr := freeTCPAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := Start(ctx, Config{
		DataDir: dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{upstream(t)},
		UAPIPath: filepath.Join(dir, "wg.sock"), APIAddr: addr, APIToken: token, Logf: logs.logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o700},
		{filepath.Join(dir, api.SocketName), 0o600},
		{filepath.Join(dir, "gateway.key"), 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s has mode %o, want %o", tc.path, fi.Mode().Perm(), tc.mode)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, api.SocketName)); fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is not a socket", api.SocketName)
	}

	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"no token", "", 401},
		{"wrong token", "Bearer wrong-" + token[:6], 401},
		{"token without Bearer", token, 401},
		{"prefix of the token", "Bearer " + token[:len(token)-1], 401},
		{"lower-case scheme", "bearer " + token, 401},
		{"right token", "Bearer " + token, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/apps", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d %s, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want == 401 && !strings.Contains(string(body), "--api-token") {
				t.Errorf("401 body does not say what to do: %s", body)
			}
		})
	}
	// The client with the right token can write.
	cl := api.NewTCPClient(addr, token)
	if _, err := cl.CreateOrg(ctx, "acme"); err != nil {
		t.Errorf("create org over TCP with the token: %v", err)
	}
	if _, err := api.NewTCPClient(addr, "nope").CreateOrg(ctx, "evil"); err == nil {
		t.Errorf("create org with a wrong token succeeded")
	}
	keyText, err := os.ReadFile(filepath.Join(dir, "gateway.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := wgtypes.ParseKey(strings.TrimSpace(string(keyText)))
	if err != nil {
		t.Fatalf("gateway.key: %v", err)
	}
	g.Close()
	text := logs.text()
	if !strings.Contains(text, "missing or wrong bearer token") {
		t.Errorf("refusals were not logged; logs:\n%s", text)
	}
	for what, secret := range map[string]string{
		"API token":               token,
		"token prefix":            token[:len(token)-1],
		"private key":             key.String(),
		"private key (hex, UAPI)": hex.EncodeToString(key[:]),
	} {
		if strings.Contains(text, secret) {
			t.Errorf("the %s appears in the logs", what)
		}
	}
	t.Logf("%d log lines scanned for secrets", strings.Count(text, "\n")+1)
}

// TestControlAPINoToken: a TCP API without a token is refused at start, so
// no one can open an unauthenticated control port by mistake.
func TestControlAPINoToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	g, err := Start(ctx, Config{DataDir: dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{upstream(t)},
		UAPIPath: filepath.Join(dir, "wg.sock"), APIAddr: freeTCPAddr(t)})
	if err == nil {
		g.Close()
		t.Fatal("gateway started a TCP API without a token")
	}
	if !strings.Contains(err.Error(), "token") {
		t.Errorf("err = %v, want it to ask for a token", err)
	}
}
