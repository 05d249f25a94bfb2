package flycast

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/devgate/devgate/store"
)

// machineState is the proxy's runtime view of one machine. Fields without a
// comment are guarded by Proxy.mu.
type machineState struct {
	id string // immutable
	// rec is the latest record: from a snapshot, or from our own last
	// transition when that is newer.
	rec store.Machine
	// started mirrors rec.State == started for the lock-free packet path.
	started atomic.Bool
	// load counts balancer units in use: spliced connections and in-flight
	// http requests.
	load int
	// direct counts open direct 6PN connections; they keep a machine awake
	// but do not count against its concurrency limits.
	direct int
	// lastActive is the UnixNano of the last connection event or byte.
	lastActive atomic.Int64
	// wake is the start in progress, shared by everyone who waits for it.
	wake *wakeOp
	// stopDone is closed when the stop in progress ends.
	stopDone chan struct{}
	// exited is closed when the driver reports that the process started by
	// the current wake ended; exitErr says why.
	exited  chan struct{}
	exitErr error
	// conns are backend connections of open splices, closed when the
	// machine exits or stops so that the clients see their connection end.
	conns map[net.Conn]struct{}
	// idle are the http fast path's keep-alive connections, newest last;
	// each is in conns too, so that a stop closes it.
	idle []*backConn
}

// wakeOp is one start of one machine. err is set before done is closed.
type wakeOp struct {
	done chan struct{}
	err  error
}

// appState is the runtime state of one app.
type appState struct {
	// queue holds connections waiting for a machine below its hard limit,
	// oldest first.
	queue []*waiter
	// rr rotates ties between equally loaded machines.
	rr int
}

// waiter is a queued connection. The machine granted to it arrives on ch
// with its load already counted.
type waiter struct {
	svc *Service
	ch  chan *machineState
}

func (ms *machineState) setState(m store.Machine) {
	ms.rec = m
	ms.setStartedFlag()
}

func (ms *machineState) setStartedFlag() {
	ms.started.Store(ms.rec.State == store.MachineStarted && ms.stopDone == nil)
}

// isStarted reports whether the balancer may send work to the machine.
func (ms *machineState) isStarted() bool {
	return ms.rec.State == store.MachineStarted && ms.stopDone == nil
}

func (ms *machineState) touch() { ms.lastActive.Store(time.Now().UnixNano()) }

func (ms *machineState) addConnLocked(c net.Conn) {
	if ms.conns == nil {
		ms.conns = make(map[net.Conn]struct{})
	}
	ms.conns[c] = struct{}{}
}

func (ms *machineState) closeConnsLocked() {
	for c := range ms.conns {
		c.Close()
	}
	ms.conns = nil
	clear(ms.idle)
	ms.idle = ms.idle[:0]
}

func (p *Proxy) appStateLocked(app string) *appState {
	as := p.appStates[app]
	if as == nil {
		as = &appState{}
		p.appStates[app] = as
	}
	return as
}

// forget removes a backend conn from its machine.
func (p *Proxy) forgetConn(ms *machineState, c net.Conn) {
	p.mu.Lock()
	delete(ms.conns, c)
	p.mu.Unlock()
}
