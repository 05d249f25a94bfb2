package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/store"
)

// fuzzRoutes are the API's routes that read a JSON body.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/orgs"},
	{"POST", "/v1/peers"},
	{"POST", "/v1/apps"},
	{"POST", "/v1/apps/hello/deploy"},
	{"POST", "/v1/apps/hello/ips"},
	{"POST", "/v1/apps/hello/machines"},
	{"POST", "/v1/apps/nosuch/ips"},
}

// stateDump is everything the store holds, as JSON, for comparing before
// and after a request.
func stateDump(ctx context.Context, st *store.Store) ([]byte, error) {
	var all struct {
		Orgs     []store.Org
		Networks []store.Network
		Peers    []store.Peer
		Apps     []store.App
		IPs      [][]store.IP
		Machines []store.Machine
	}
	var err error
	if all.Orgs, err = st.ListOrgs(ctx); err != nil {
		return nil, err
	}
	for _, o := range all.Orgs {
		ns, err := st.ListNetworks(ctx, o.Name)
		if err != nil {
			return nil, err
		}
		all.Networks = append(all.Networks, ns...)
	}
	if all.Peers, err = st.ListPeers(ctx, ""); err != nil {
		return nil, err
	}
	if all.Apps, err = st.ListApps(ctx); err != nil {
		return nil, err
	}
	for _, a := range all.Apps {
		ips, err := st.ListIPs(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		all.IPs = append(all.IPs, ips)
	}
	if all.Machines, err = st.ListMachines(ctx, ""); err != nil {
		return nil, err
	}
	return json.Marshal(all)
}

// FuzzAPIBodies sends arbitrary JSON bodies to every route that reads one,
// through the real API handler over a real store (embedded NATS) and the
// real gateway behind it. No answer is a 5xx other than 503, nothing panics,
// and a refused request (4xx) leaves the stored state exactly as it was.
func FuzzAPIBodies(f *testing.F) {
	seeds := []string{
		`{"name":"acme"}`,
		`{"name":"Bad_Name"}`,
		`{"org":"personal","name":"laptop","public_key":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}`,
		`{"org":"personal","name":"laptop","public_key":"short"}`,
		`{"org":"nosuch","name":"x","public_key":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}`,
		`{"name":"app2","org":"personal","config":"YXBwID0gJ2FwcDInCg=="}`,
		`{"name":"app3","config":"W1tbW1s="}`,
		`{"config":"!!!"}`,
		`{"org":"acme"}`,
		`{"org":"nosuch","network":"x"}`,
		`{"region":"mars"}`,
		`{"unknown":1}`,
		`{"name":` + string(bytes.Repeat([]byte(`"a`), 100)) + `}`,
		`[]`, `null`, `{}`, ``, `{"name":"\u0000"}`, `{"name":"a"}{"name":"b"}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i%len(fuzzRoutes)), []byte(s))
	}
	dir := f.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := Start(ctx, Config{DataDir: dir, RandomPort: true, Endpoint: "127.0.0.1:0", UpstreamDNS: []string{"127.0.0.1:1"},
		UAPIPath: filepath.Join(dir, "wg.sock"), IdleTimeout: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { g.Close() })
	// An app with no deployment, so deploy/ips/machines routes reach their
	// validation and store code rather than a plain 404.
	if _, err := g.Store().CreateApp(ctx, store.App{Name: "hello", Org: "personal", Network: "default", Flycast: true}); err != nil {
		f.Fatal(err)
	}
	h := api.NewServer(g.Store(), control{g}, "", nil).Handler()
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		before, err := stateDump(ctx, g.Store())
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequestWithContext(ctx, rt.method, rt.path, bytes.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		code := w.Code
		if code >= 500 && code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s %q: %d %s", rt.method, rt.path, body, code, w.Body)
		}
		var e api.Error
		if code >= 400 {
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Errorf("%s %s: %d with no JSON error message: %q", rt.method, rt.path, code, w.Body)
			}
			after, err := stateDump(ctx, g.Store())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Fatalf("%s %s %q was refused (%d %s) but changed the state:\nbefore %s\nafter  %s", rt.method, rt.path, body, code, e.Error, before, after)
			}
		}
	})
}
