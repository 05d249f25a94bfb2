package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/devgate/devgate/store"
)

// SocketName is the API socket's file name inside the data dir.
const SocketName = "devgate.sock"

// ErrNoGateway means no gateway answers on the socket.
var ErrNoGateway = errors.New("no devgate gateway is running")

// Client talks to a gateway's API.
type Client struct {
	http  *http.Client
	base  string
	token string
	where string // for error messages
}

// NewUnixClient returns a client for the socket in dataDir.
func NewUnixClient(dataDir string) *Client {
	sock := filepath.Join(dataDir, SocketName)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, base: "http://devgate", where: sock}
}

// NewTCPClient returns a client for a gateway's --api-addr.
func NewTCPClient(addr, token string) *Client {
	return &Client{http: &http.Client{Timeout: 2 * time.Minute}, base: "http://" + addr, token: token, where: addr}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w at %s; start one with `devgate serve` (or set --data-dir / DEVGATE_DATA_DIR to the one it uses)", ErrNoGateway, c.where)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Error}
		}
		return &StatusError{Code: resp.StatusCode, Message: string(bytes.TrimSpace(data))}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
		}
	}
	return nil
}

// StatusError is an API error answer.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Status returns the gateway's summary.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, "GET", "/v1/status", nil, &s)
}

// ListOrgs lists organizations.
func (c *Client) ListOrgs(ctx context.Context) ([]store.Org, error) {
	var out []store.Org
	return out, c.do(ctx, "GET", "/v1/orgs", nil, &out)
}

// CreateOrg creates an organization with its default network.
func (c *Client) CreateOrg(ctx context.Context, name string) (store.Org, error) {
	var out store.Org
	return out, c.do(ctx, "POST", "/v1/orgs", CreateOrgRequest{Name: name}, &out)
}

// CreatePeer registers a peer's public key.
func (c *Client) CreatePeer(ctx context.Context, req CreatePeerRequest) (CreatePeerResponse, error) {
	var out CreatePeerResponse
	return out, c.do(ctx, "POST", "/v1/peers", req, &out)
}

// ListPeers lists peers ("" = every organization) with live stats.
func (c *Client) ListPeers(ctx context.Context, org string) ([]PeerInfo, error) {
	var out []PeerInfo
	return out, c.do(ctx, "GET", "/v1/peers?org="+url.QueryEscape(org), nil, &out)
}

// DeletePeer removes a peer; its tunnel stops at once.
func (c *Client) DeletePeer(ctx context.Context, org, name string) error {
	return c.do(ctx, "DELETE", "/v1/peers/"+url.PathEscape(org)+"/"+url.PathEscape(name), nil, nil)
}

// ListApps lists apps.
func (c *Client) ListApps(ctx context.Context) ([]store.App, error) {
	var out []store.App
	return out, c.do(ctx, "GET", "/v1/apps", nil, &out)
}

// GetApp returns one app.
func (c *Client) GetApp(ctx context.Context, name string) (store.App, error) {
	var out store.App
	return out, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(name), nil, &out)
}

// CreateApp creates an app.
func (c *Client) CreateApp(ctx context.Context, req CreateAppRequest) (store.App, error) {
	var out store.App
	return out, c.do(ctx, "POST", "/v1/apps", req, &out)
}

// DestroyApp stops and removes an app with its machines and addresses.
func (c *Client) DestroyApp(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/apps/"+url.PathEscape(name), nil, nil)
}

// Deploy deploys an app's fly.toml.
func (c *Client) Deploy(ctx context.Context, app string, req DeployRequest) (DeployResponse, error) {
	var out DeployResponse
	return out, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(app)+"/deploy", req, &out)
}

// ListIPs lists an app's addresses.
func (c *Client) ListIPs(ctx context.Context, app string) ([]store.IP, error) {
	var out []store.IP
	return out, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(app)+"/ips", nil, &out)
}

// AllocateIP allocates a Flycast address.
func (c *Client) AllocateIP(ctx context.Context, app string, req AllocateIPRequest) (store.IP, error) {
	var out store.IP
	return out, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(app)+"/ips", req, &out)
}

// ReleaseIP releases an address.
func (c *Client) ReleaseIP(ctx context.Context, app, addr string) error {
	return c.do(ctx, "DELETE", "/v1/apps/"+url.PathEscape(app)+"/ips/"+url.PathEscape(addr), nil, nil)
}

// ListMachines lists an app's machines.
func (c *Client) ListMachines(ctx context.Context, app string) ([]store.Machine, error) {
	var out []store.Machine
	return out, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(app)+"/machines", nil, &out)
}

// RunMachine adds a machine to an app and starts it.
func (c *Client) RunMachine(ctx context.Context, app string, req RunMachineRequest) (store.Machine, error) {
	var out store.Machine
	return out, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(app)+"/machines", req, &out)
}

// StartMachine starts a machine.
func (c *Client) StartMachine(ctx context.Context, id string) error {
	return c.do(ctx, "POST", "/v1/machines/"+url.PathEscape(id)+"/start", nil, nil)
}

// StopMachine stops a machine.
func (c *Client) StopMachine(ctx context.Context, id string) error {
	return c.do(ctx, "POST", "/v1/machines/"+url.PathEscape(id)+"/stop", nil, nil)
}

// DestroyMachine stops and removes a machine.
func (c *Client) DestroyMachine(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/machines/"+url.PathEscape(id), nil, nil)
}
