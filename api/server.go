package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/devgate/devgate/store"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrInvalid marks a request the caller must change; it maps to 400.
var ErrInvalid = errors.New("invalid request")

// Invalidf returns an error that wraps ErrInvalid with a message that says
// what to do.
func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// PeerStat is one peer's live WireGuard counters, keyed by public key.
type PeerStat struct {
	LastHandshake time.Time
	Endpoint      string
	RxBytes       int64
	TxBytes       int64
}

// Control is the gateway as the API sees it: the operations that touch
// running machines, the tunnel, or more than one record.
type Control interface {
	Status() Status
	PeerStats() (map[string]PeerStat, error)
	// CheckConfig parses a fly.toml and returns its warnings.
	CheckConfig(filename string, config []byte) (warnings []string, err error)
	Deploy(ctx context.Context, app string, req DeployRequest) (DeployResponse, error)
	RunMachine(ctx context.Context, app string, req RunMachineRequest) (store.Machine, error)
	StartMachine(ctx context.Context, id string) error
	StopMachine(ctx context.Context, id string) error
	DestroyMachine(ctx context.Context, id string) error
	DestroyApp(ctx context.Context, name string) error
}

// Server serves the API.
type Server struct {
	store   *store.Store
	control Control
	token   string
	logf    func(string, ...any)

	mu      sync.Mutex
	servers []*http.Server
	closed  bool
}

// NewServer returns a server; it starts nothing. token protects TCP
// listeners (ServeTCP) and may be empty only when none is used.
func NewServer(st *store.Store, c Control, token string, logf func(string, ...any)) *Server {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Server{store: st, control: c, token: token, logf: logf}
}

// Serve answers requests on l, a unix socket whose file mode (0600) is the
// access control. It returns a non-nil error, http.ErrServerClosed after Close.
func (s *Server) Serve(l net.Listener) error {
	return s.serve(l, s.routes())
}

// ServeTCP answers requests on a TCP listener; every request must carry
// "Authorization: Bearer <token>".
func (s *Server) ServeTCP(l net.Listener) error {
	if s.token == "" {
		return errors.New("api: refusing to serve TCP without a token; set one with --api-token or DEVGATE_API_TOKEN")
	}
	return s.serve(l, s.requireToken(s.routes()))
}

func (s *Server) serve(l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
	return srv.Serve(l)
}

// Close stops every listener and waits up to ctx for requests in flight.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	srvs := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range srvs {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Server) requireToken(h http.Handler) http.Handler {
	want := []byte("Bearer " + s.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			// Never log the presented token: it may be a near-miss of the real one.
			s.logf("api: rejected %s %s from %s: missing or wrong bearer token", r.Method, r.URL.Path, r.RemoteAddr)
			writeErr(w, http.StatusUnauthorized, "missing or wrong API token; pass the gateway's token with --api-token or DEVGATE_API_TOKEN")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.control.Status()) })
	mux.HandleFunc("GET /v1/orgs", s.listOrgs)
	mux.HandleFunc("POST /v1/orgs", s.createOrg)
	mux.HandleFunc("GET /v1/peers", s.listPeers)
	mux.HandleFunc("POST /v1/peers", s.createPeer)
	mux.HandleFunc("DELETE /v1/peers/{org}/{name}", s.deletePeer)
	mux.HandleFunc("GET /v1/apps", s.listApps)
	mux.HandleFunc("POST /v1/apps", s.createApp)
	mux.HandleFunc("GET /v1/apps/{app}", s.getApp)
	mux.HandleFunc("DELETE /v1/apps/{app}", s.destroyApp)
	mux.HandleFunc("POST /v1/apps/{app}/deploy", s.deploy)
	mux.HandleFunc("GET /v1/apps/{app}/ips", s.listIPs)
	mux.HandleFunc("POST /v1/apps/{app}/ips", s.allocateIP)
	mux.HandleFunc("DELETE /v1/apps/{app}/ips/{addr}", s.releaseIP)
	mux.HandleFunc("GET /v1/apps/{app}/machines", s.listMachines)
	mux.HandleFunc("POST /v1/apps/{app}/machines", s.runMachine)
	mux.HandleFunc("POST /v1/machines/{id}/start", s.machineAction(s.control.StartMachine))
	mux.HandleFunc("POST /v1/machines/{id}/stop", s.machineAction(s.control.StopMachine))
	mux.HandleFunc("DELETE /v1/machines/{id}", s.machineAction(s.control.DestroyMachine))
	return mux
}

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) {
	orgs, err := s.store.ListOrgs(r.Context())
	reply(w, orgs, err)
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) {
	var req CreateOrgRequest
	if !readJSON(w, r, &req) {
		return
	}
	org, err := s.store.CreateOrg(r.Context(), req.Name)
	replyStatus(w, http.StatusCreated, org, err)
}

func (s *Server) listPeers(w http.ResponseWriter, r *http.Request) {
	org := r.URL.Query().Get("org")
	if org != "" {
		if _, err := s.store.GetOrg(r.Context(), org); err != nil {
			reply(w, nil, err)
			return
		}
	}
	ps, err := s.store.ListPeers(r.Context(), org)
	if err != nil {
		reply(w, nil, err)
		return
	}
	stats, err := s.control.PeerStats()
	if err != nil {
		s.logf("api: peer stats: %v", err)
	}
	out := make([]PeerInfo, 0, len(ps))
	for _, p := range ps {
		st := stats[p.PublicKey]
		out = append(out, PeerInfo{Peer: p, LastHandshake: st.LastHandshake, Endpoint: st.Endpoint, RxBytes: st.RxBytes, TxBytes: st.TxBytes})
	}
	reply(w, out, nil)
}

func (s *Server) createPeer(w http.ResponseWriter, r *http.Request) {
	var req CreatePeerRequest
	if !readJSON(w, r, &req) {
		return
	}
	key, err := wgtypes.ParseKey(req.PublicKey)
	if err != nil {
		reply(w, nil, Invalidf("public_key is not a WireGuard public key (44 base64 characters)"))
		return
	}
	st := s.control.Status()
	if req.Region == "" {
		req.Region = st.Region
	}
	if !contains(st.Regions, req.Region) {
		reply(w, nil, Invalidf("no gateway serves region %q; regions that exist: %s", req.Region, strings.Join(st.Regions, ", ")))
		return
	}
	if req.Network == "" {
		req.Network = store.DefaultNetwork
	}
	p, err := s.store.CreatePeer(r.Context(), store.Peer{Org: req.Org, Network: req.Network, Name: req.Name, Region: req.Region, PublicKey: key.String()})
	if err != nil {
		reply(w, nil, err)
		return
	}
	n, err := s.store.GetNetwork(r.Context(), p.Org, p.Network)
	if err != nil {
		reply(w, nil, err)
		return
	}
	replyStatus(w, http.StatusCreated, CreatePeerResponse{Peer: p, NetworkPrefix: n.Prefix, GatewayPublicKey: st.PublicKey, Endpoint: st.Endpoint}, nil)
}

func (s *Server) deletePeer(w http.ResponseWriter, r *http.Request) {
	err := s.store.DeletePeer(r.Context(), r.PathValue("org"), r.PathValue("name"))
	replyStatus(w, http.StatusNoContent, nil, err)
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	apps, err := s.store.ListApps(r.Context())
	reply(w, apps, err)
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	a, err := s.store.GetApp(r.Context(), r.PathValue("app"))
	reply(w, a, err)
}

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) {
	var req CreateAppRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Org == "" {
		req.Org = store.DefaultOrg
	}
	if req.Network == "" {
		req.Network = store.DefaultNetwork
	}
	if len(req.Config) > 0 {
		if _, err := s.control.CheckConfig("fly.toml", req.Config); err != nil {
			reply(w, nil, err)
			return
		}
	}
	if _, err := s.store.GetNetwork(r.Context(), req.Org, req.Network); err != nil {
		reply(w, nil, err)
		return
	}
	a, err := s.store.CreateApp(r.Context(), store.App{Name: req.Name, Org: req.Org, Network: req.Network, Flycast: req.Flycast, Config: req.Config})
	replyStatus(w, http.StatusCreated, a, err)
}

func (s *Server) destroyApp(w http.ResponseWriter, r *http.Request) {
	err := s.control.DestroyApp(r.Context(), r.PathValue("app"))
	replyStatus(w, http.StatusNoContent, nil, err)
}

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) {
	var req DeployRequest
	if !readJSON(w, r, &req) {
		return
	}
	res, err := s.control.Deploy(r.Context(), r.PathValue("app"), req)
	reply(w, res, err)
}

func (s *Server) listIPs(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if _, err := s.store.GetApp(r.Context(), app); err != nil {
		reply(w, nil, err)
		return
	}
	ips, err := s.store.ListIPs(r.Context(), app)
	reply(w, ips, err)
}

func (s *Server) allocateIP(w http.ResponseWriter, r *http.Request) {
	var req AllocateIPRequest
	if !readJSON(w, r, &req) {
		return
	}
	a, err := s.store.GetApp(r.Context(), r.PathValue("app"))
	if err != nil {
		reply(w, nil, err)
		return
	}
	org, network := req.Org, req.Network
	if org == "" {
		org = a.Org
	}
	if network == "" {
		network = store.DefaultNetwork
		if org == a.Org {
			network = a.Network
		}
	}
	ip, err := s.store.AllocateIP(r.Context(), a.Name, org, network, "global")
	replyStatus(w, http.StatusCreated, ip, err)
}

func (s *Server) releaseIP(w http.ResponseWriter, r *http.Request) {
	addr, err := netip.ParseAddr(r.PathValue("addr"))
	if err != nil {
		reply(w, nil, Invalidf("%q is not an IP address; see `devgate ips list` for the app's addresses", r.PathValue("addr")))
		return
	}
	err = s.store.ReleaseIP(r.Context(), r.PathValue("app"), addr)
	replyStatus(w, http.StatusNoContent, nil, err)
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if _, err := s.store.GetApp(r.Context(), app); err != nil {
		reply(w, nil, err)
		return
	}
	ms, err := s.store.ListMachines(r.Context(), app)
	reply(w, ms, err)
}

func (s *Server) runMachine(w http.ResponseWriter, r *http.Request) {
	var req RunMachineRequest
	if !readJSON(w, r, &req) {
		return
	}
	m, err := s.control.RunMachine(r.Context(), r.PathValue("app"), req)
	replyStatus(w, http.StatusCreated, m, err)
}

func (s *Server) machineAction(fn func(context.Context, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		err := fn(r.Context(), r.PathValue("id"))
		replyStatus(w, http.StatusNoContent, nil, err)
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes))
			return false
		}
		writeErr(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) { replyStatus(w, http.StatusOK, v, err) }

func replyStatus(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	if code == http.StatusNoContent {
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, v)
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, store.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, store.ErrExists):
		return http.StatusConflict
	case errors.Is(err, store.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writeErr(w http.ResponseWriter, code int, msg string) { writeJSON(w, code, Error{Error: msg}) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
