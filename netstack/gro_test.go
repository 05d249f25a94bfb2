package netstack

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// maxGROTestBatch bounds how many of the peer's packets the batching pump
// hands to the link per Write, as wireguard-go hands a decrypted batch.
const maxGROTestBatch = 64

// newBatchedPeerStack is newPeerStack with the laptop-to-gateway pump
// handing the link every packet already queued, up to maxGROTestBatch, in
// one Write, so segments of one flow meet in a batch and GRO can merge them.
func newBatchedPeerStack(t *testing.T, gw *Stack) *peerStack {
	p := newPeerStack(t, gw, testPeer)
	// Stop the one-packet pump and start the batching one on the same
	// channel endpoint.
	p.cancel()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	dev := gw.TUN()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			pkt := p.ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			var batch [][]byte
			for pkt != nil && len(batch) < maxGROTestBatch {
				v := pkt.ToView()
				pkt.DecRef()
				batch = append(batch, bytes.Clone(v.AsSlice()))
				v.Release()
				pkt = p.ep.Read()
			}
			if pkt != nil {
				v := pkt.ToView()
				pkt.DecRef()
				batch = append(batch, bytes.Clone(v.AsSlice()))
				v.Release()
			}
			dev.Write(batch, 0)
		}
	}()
	t.Cleanup(cancel)
	return p
}

// TestGROBulkUpload sends a bulk stream whose segments reach the link in
// batches: every byte must arrive in order (merged segments carry the first
// segment's checksum, and Flush must not leave packets behind), and GRO
// must actually have merged some.
func TestGROBulkUpload(t *testing.T) {
	gw, r := newTestStack(t, Config{})
	const size = 4 << 20
	got := make(chan []byte, 1)
	r.tcp[9] = handlerFunc(func(q TCPRequest) {
		c, err := q.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(c, size))
		got <- b
	})
	c := dialWithin(t, newBatchedPeerStack(t, gw), 9, 20*time.Second)
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, msg) {
			t.Fatalf("handler got %d bytes, want the %d sent, in order", len(b), len(msg))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("upload did not finish")
	}
	in := gw.Stats().RxPackets
	ip := gw.stack.Stats().IP.PacketsReceived.Value()
	if ip >= in {
		t.Errorf("GRO merged nothing: %d packets into the link, %d into IP", in, ip)
	}
	t.Logf("%d packets into the link, %d into IP after GRO", in, ip)
	if s := gw.Stats(); s.DroppedBadChecksum != 0 {
		t.Errorf("%d packets dropped for their checksum", s.DroppedBadChecksum)
	}
}

// serveDownload makes port on the test stack send size patterned bytes on
// each connection and close it; it returns the bytes.
func serveDownload(r *router, port uint16, size int) []byte {
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 13)
	}
	r.tcp[port] = handlerFunc(func(q TCPRequest) {
		c, err := q.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(msg)
	})
	return msg
}

// TestGSODownload sends a bulk stream from the gateway to the peer, whose
// pump reads 16 link packets at a time: gVisor hands the link TCP packets
// of up to 64 KiB, read cuts them into segments across reads, and every
// byte must arrive in order with checksums the peer's stack accepts.
func TestGSODownload(t *testing.T) {
	gw, r := newTestStack(t, Config{})
	msg := serveDownload(r, 9, 4<<20)
	p := newPeerStack(t, gw, testPeer)
	got, err := io.ReadAll(dialWithin(t, p, 9, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %d bytes, want the %d sent, in order", len(got), len(msg))
	}
	sent, out := gw.stack.Stats().IP.PacketsSent.Value(), gw.Stats().TxPackets
	if out <= sent {
		t.Errorf("nothing was cut: %d packets from the stack, %d to wireguard-go", sent, out)
	}
	t.Logf("%d packets from the stack, %d to wireguard-go after cutting", sent, out)
	if bad := p.s.Stats().TCP.ChecksumErrors.Value(); bad != 0 {
		t.Errorf("the peer dropped %d segments for their checksum", bad)
	}
}
