// Package machines runs the backends of apps: a Driver starts, stops and
// watches machines, and says where the proxy reaches them. The process
// driver (the embedded default) runs a command on this host; the docker
// driver runs containers through the Docker Engine API.
//
// Drivers know nothing of the store, the proxy or the network stack, and
// must never import them (store, flycast, netstack, gateway, api): the
// flycast package decides when to start and stop, and persists state.
package machines

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"time"
)

// ErrNotRunning is returned for operations that need a running machine.
var ErrNotRunning = errors.New("machine is not running")

// Spec describes one machine to start.
type Spec struct {
	ID     string // 14 hex digits
	App    string
	Region string
	// Command (process driver) or Image (docker driver) to run.
	Command []string
	Image   string
	// Env is added to the machine's environment, after PORT, FLY_APP_NAME,
	// FLY_MACHINE_ID, FLY_REGION and FLY_PRIVATE_IP, which the driver sets.
	Env map[string]string
	// Ports are the internal ports the machine's services listen on; the
	// first is the one named by $PORT.
	Ports []int
	// PrivateIP is the machine's 6PN address (FLY_PRIVATE_IP).
	PrivateIP netip.Addr
	// KillSignal is sent on Stop; after KillTimeout the machine is killed.
	KillSignal  syscall.Signal
	KillTimeout time.Duration
	// LogPath is where the machine's output goes (process driver).
	LogPath string
}

// Exit reports that a machine's process ended, on its own or after Stop.
type Exit struct {
	ID       string
	ExitCode int   // -1 when killed by a signal or unknown
	Err      error // non-nil when the machine failed (exit code != 0, start error)
	Stopped  bool  // true when the exit followed a Stop call
}

// Driver runs machines. All methods are safe for concurrent use.
type Driver interface {
	// Name is "process" or "docker".
	Name() string
	// Start launches the machine and returns once it is running (not
	// necessarily listening: see Backend and WaitReady).
	Start(ctx context.Context, spec Spec) error
	// Stop sends the kill signal, waits up to the kill timeout, then kills.
	// Stopping a machine that is not running returns nil.
	Stop(ctx context.Context, id string) error
	// Destroy stops the machine if needed and removes what the driver keeps
	// for it (a container; nothing for a process).
	Destroy(ctx context.Context, id string) error
	// Backend returns the address at which the machine's internal port is
	// reached from this host. It fails with ErrNotRunning when not running.
	Backend(id string, internalPort int) (netip.AddrPort, error)
	// Exits delivers an Exit for every machine process that ends. The
	// channel is closed by Close.
	Exits() <-chan Exit
	// Close stops every machine the driver started and releases resources.
	Close() error
}
