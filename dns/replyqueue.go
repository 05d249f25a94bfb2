package dns

import (
	"net"
	"sync"
	"time"
)

// replyQueueLen bounds the UDP replies waiting for the writer. A full
// queue makes the handlers wait, as a full socket buffer would.
const replyQueueLen = 256

// replyQueue is a PacketConn whose writes are made by one long-lived
// goroutine. miekg/dns answers each UDP query on a goroutine of its own;
// writing the reply there ran the netstack's whole send path (UDP, IPv6,
// the NIC, the link) on a fresh stack, which the runtime grew and copied
// for every query: 15 % of the gateway's CPU under a query flood (ninth
// pass profile). The writer's stack grows once.
type replyQueue struct {
	net.PacketConn
	q      chan reply
	done   chan struct{} // closed by Close: no more writes
	exited chan struct{} // closed by the writer as it returns
	once   sync.Once
}

type reply struct {
	b  []byte
	to net.Addr
}

func newReplyQueue(pc net.PacketConn) *replyQueue {
	r := &replyQueue{PacketConn: pc, q: make(chan reply, replyQueueLen), done: make(chan struct{}), exited: make(chan struct{})}
	go r.run()
	return r
}

func (r *replyQueue) run() {
	defer close(r.exited)
	for {
		select {
		case d := <-r.q:
			// A reply that cannot be sent is a lost datagram, which the
			// client's retry covers; there is nobody to tell.
			_, _ = r.PacketConn.WriteTo(d.b, d.to)
		case <-r.done:
			for { // what was queued before Close: the handlers' last replies
				select {
				case d := <-r.q:
					_, _ = r.PacketConn.WriteTo(d.b, d.to)
				default:
					return
				}
			}
		}
	}
}

// WriteTo queues a copy of b for to and reports it written.
func (r *replyQueue) WriteTo(b []byte, to net.Addr) (int, error) {
	d := reply{b: append([]byte(nil), b...), to: to}
	select {
	case <-r.done:
		return 0, net.ErrClosed
	default:
	}
	select {
	case r.q <- d:
		return len(b), nil
	case <-r.done:
		return 0, net.ErrClosed
	}
}

// Close refuses further writes, lets the writer send what is queued (for
// up to writeTimeout: miekg/dns closes its listener after its handlers
// have returned, so their last replies are in the queue), then closes the
// connection, which ends a write still in progress. It may be called more
// than once (miekg/dns closes its listener, and so does Server.Close).
func (r *replyQueue) Close() error {
	r.once.Do(func() { close(r.done) })
	t := time.NewTimer(writeTimeout)
	defer t.Stop()
	select {
	case <-r.exited:
	case <-t.C:
	}
	err := r.PacketConn.Close()
	<-r.exited
	return err
}
