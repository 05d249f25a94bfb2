package api

import (
	"fmt"
	"net/http"

	"github.com/devgate/devgate/store"
)

// OrgHandler serves the read-only API of one organization. The gateway puts
// it on each network's <prefix>::3:4280, where peers reach it through the
// tunnel as _api.internal, as Fly's does. The netstack's isolation rule
// already keeps other organizations' packets away; the handler adds the
// second half: even a request that arrives shows only this organization's
// records, and nothing can be changed (a laptop's key is not an admin's).
//
// An app of another organization answers 404, not 403, so its name is not
// confirmed to exist.
func OrgHandler(st *store.Store, org string) http.Handler {
	v := orgView{store: st, org: org}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/apps", v.listApps)
	mux.HandleFunc("GET /v1/apps/{app}", v.getApp)
	mux.HandleFunc("GET /v1/apps/{app}/ips", v.listIPs)
	mux.HandleFunc("GET /v1/apps/{app}/machines", v.listMachines)
	mux.HandleFunc("GET /v1/peers", v.listPeers)
	mux.HandleFunc("/", v.forbidden)
	return mux
}

type orgView struct {
	store *store.Store
	org   string
}

func (v orgView) forbidden(w http.ResponseWriter, r *http.Request) {
	writeErr(w, http.StatusForbidden, fmt.Sprintf(
		"%s %s: the API through the tunnel (_api.internal) is read-only and shows only organization %q "+
			"(GET /v1/apps, /v1/apps/{app}, /v1/apps/{app}/ips, /v1/apps/{app}/machines, /v1/peers); "+
			"to change anything use the CLI on the gateway host, or --api-addr with the API token",
		r.Method, r.URL.Path, v.org))
}

func (v orgView) listApps(w http.ResponseWriter, r *http.Request) {
	apps, err := v.store.ListApps(r.Context())
	if err != nil {
		reply(w, nil, err)
		return
	}
	out := make([]store.App, 0, len(apps))
	for _, a := range apps {
		if a.Org == v.org {
			out = append(out, a)
		}
	}
	reply(w, out, nil)
}

// app returns the named app if it belongs to the organization, and answers
// 404 otherwise.
func (v orgView) app(w http.ResponseWriter, r *http.Request) (store.App, bool) {
	a, err := v.store.GetApp(r.Context(), r.PathValue("app"))
	if err == nil && a.Org != v.org {
		err = fmt.Errorf("app %q: %w in organization %q", r.PathValue("app"), store.ErrNotFound, v.org)
	}
	if err != nil {
		reply(w, nil, err)
		return store.App{}, false
	}
	return a, true
}

func (v orgView) getApp(w http.ResponseWriter, r *http.Request) {
	if a, ok := v.app(w, r); ok {
		reply(w, a, nil)
	}
}

func (v orgView) listIPs(w http.ResponseWriter, r *http.Request) {
	a, ok := v.app(w, r)
	if !ok {
		return
	}
	ips, err := v.store.ListIPs(r.Context(), a.Name)
	reply(w, ips, err)
}

func (v orgView) listMachines(w http.ResponseWriter, r *http.Request) {
	a, ok := v.app(w, r)
	if !ok {
		return
	}
	ms, err := v.store.ListMachines(r.Context(), a.Name)
	reply(w, ms, err)
}

func (v orgView) listPeers(w http.ResponseWriter, r *http.Request) {
	if q := r.URL.Query().Get("org"); q != "" && q != v.org {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("the API through the tunnel shows only organization %q", v.org))
		return
	}
	ps, err := v.store.ListPeers(r.Context(), v.org)
	reply(w, ps, err)
}
