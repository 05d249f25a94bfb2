// Package api is devgate's control API: HTTP/JSON on a unix socket in the
// data dir (mode 0600), and optionally on TCP with a bearer token, for remote
// CLIs. The CLI is its only intended client; Client wraps it.
//
// The API owns request validation and the mapping of errors to status codes.
// It reads and writes state through the store and asks the gateway (Control)
// for everything that touches running machines or the tunnel. It must never
// be imported by data-plane packages (tunnel, netstack, dns, flycast).
package api

import (
	"net/netip"
	"time"

	"github.com/devgate/devgate/store"
)

// MaxBodyBytes bounds a request body. The largest legitimate body is a
// fly.toml, a few KiB; 1 MiB leaves ample room.
const MaxBodyBytes = 1 << 20

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// CreatePeerRequest registers a laptop. Only the public key is sent: the
// private key never leaves the machine that made it.
type CreatePeerRequest struct {
	Org       string `json:"org"`
	Network   string `json:"network"`
	Region    string `json:"region"`
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// CreatePeerResponse is what the CLI needs to write a wg-quick file.
type CreatePeerResponse struct {
	Peer             store.Peer   `json:"peer"`
	NetworkPrefix    netip.Prefix `json:"network_prefix"`
	GatewayPublicKey string       `json:"gateway_public_key"`
	Endpoint         string       `json:"endpoint"`
}

// PeerInfo is a peer with its live WireGuard stats.
type PeerInfo struct {
	store.Peer
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	Endpoint      string    `json:"endpoint,omitempty"`
	RxBytes       int64     `json:"rx_bytes"`
	TxBytes       int64     `json:"tx_bytes"`
}

// CreateOrgRequest creates an organization.
type CreateOrgRequest struct {
	Name string `json:"name"`
}

// CreateAppRequest creates an app (launch). Config is the fly.toml text.
type CreateAppRequest struct {
	Name    string `json:"name"`
	Org     string `json:"org"`
	Network string `json:"network"`
	Flycast bool   `json:"flycast"`
	Config  []byte `json:"config"`
}

// DeployRequest deploys an app with the given fly.toml.
type DeployRequest struct {
	Config  []byte `json:"config"`
	Flycast bool   `json:"flycast"`
}

// DeployResponse says what a deploy did.
type DeployResponse struct {
	App      store.App       `json:"app"`
	IPs      []store.IP      `json:"ips"`
	Machines []store.Machine `json:"machines"`
	Warnings []string        `json:"warnings,omitempty"`
}

// AllocateIPRequest allocates a Flycast address; Org/Network name the
// network it serves (default: the app's own).
type AllocateIPRequest struct {
	Org     string `json:"org,omitempty"`
	Network string `json:"network,omitempty"`
}

// RunMachineRequest creates one more machine for an app and starts it.
type RunMachineRequest struct {
	Region string `json:"region,omitempty"`
}

// Status is the gateway's summary.
type Status struct {
	Region    string   `json:"region"`
	Regions   []string `json:"regions"`
	Endpoint  string   `json:"endpoint"`
	PublicKey string   `json:"public_key"`
	Version   string   `json:"version"`
}
