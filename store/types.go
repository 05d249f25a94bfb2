package store

import (
	"net/netip"
	"time"
)

// DefaultNetwork is the name of the network every organization gets at creation.
const DefaultNetwork = "default"

// DefaultOrg is the organization that exists from the first start.
const DefaultOrg = "personal"

// Org is an organization: a namespace for apps and peers, owning one or more networks.
type Org struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Network is a private network of an organization. It owns one /48 that is
// assigned once and never reused, even after the network is gone.
type Network struct {
	Org    string `json:"org"`
	Name   string `json:"name"`
	Number uint32 `json:"number"` // allocation index; the /48 is derived from it
	// Prefix is the network's /48 (fdaa:X:Y::/48).
	Prefix    netip.Prefix `json:"prefix"`
	CreatedAt time.Time    `json:"created_at"`
}

// Peer is a WireGuard peer (a laptop). The gateway knows only its public key.
type Peer struct {
	Org       string `json:"org"`
	Network   string `json:"network"`
	Name      string `json:"name"`
	Region    string `json:"region"`
	PublicKey string `json:"public_key"` // base64, as wg-quick writes it
	// Address is the peer's own address; the gateway routes Address/120 to it.
	Address   netip.Addr `json:"address"`
	CreatedAt time.Time  `json:"created_at"`
}

// App is a deployed application. Config holds its fly.toml exactly as written.
type App struct {
	Name    string `json:"name"`
	Org     string `json:"org"`
	Network string `json:"network"`
	// Flycast remembers `launch --flycast`, so a later plain deploy allocates a
	// Flycast address and no public one.
	Flycast bool `json:"flycast"`
	// Config is the fly.toml text of the last deploy (or launch).
	Config []byte `json:"config,omitempty"`
	// Deployed is set once the app has been deployed at least once.
	Deployed  bool      `json:"deployed"`
	CreatedAt time.Time `json:"created_at"`
}

// IPType says what kind of address an IP record is.
type IPType string

// IP types. devgate only has private (Flycast) addresses.
const (
	IPPrivate IPType = "private"
)

// IP is a Flycast address of an app. It lies in the /48 of the network it
// serves (Org, Network), which need not be the app's own.
type IP struct {
	Address   netip.Addr `json:"address"`
	App       string     `json:"app"`
	Type      IPType     `json:"type"`
	Org       string     `json:"org"`
	Network   string     `json:"network"`
	Region    string     `json:"region"`
	CreatedAt time.Time  `json:"created_at"`
}

// MachineState is a machine's lifecycle state, as Fly names them.
type MachineState string

// Machine states.
const (
	MachineCreated   MachineState = "created"
	MachineStarting  MachineState = "starting"
	MachineStarted   MachineState = "started"
	MachineStopping  MachineState = "stopping"
	MachineStopped   MachineState = "stopped"
	MachineFailed    MachineState = "failed"
	MachineDestroyed MachineState = "destroyed"
)

// Machine is one backend instance of an app.
type Machine struct {
	ID     string       `json:"id"` // 14 hex digits, like Fly's
	App    string       `json:"app"`
	Region string       `json:"region"`
	State  MachineState `json:"state"`
	// Driver names the machines.Driver that runs it ("process" or "docker").
	Driver string `json:"driver"`
	// Image (docker) or Command (process) the machine runs.
	Image   string   `json:"image,omitempty"`
	Command []string `json:"command,omitempty"`
	// Address is the machine's 6PN address in its app's network.
	Address netip.Addr `json:"address"`
	// ProcessGroup is the fly.toml process group ("app" by default).
	ProcessGroup string `json:"process_group"`
	// Reason says why the machine last stopped or failed.
	Reason    string    `json:"reason,omitempty"`
	ExitCode  int       `json:"exit_code,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}
