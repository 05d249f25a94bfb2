package netstack

import (
	"bytes"
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// gsoPacket builds an outbound TCP packet as gVisor hands it to a link
// with host GSO: IPv6 and TCP headers pushed, the TCP checksum left
// partial, payload bytes i*7.
func gsoPacket(t *testing.T, flags header.TCPFlags, seq uint32, payload, mss int) *stack.PacketBuffer {
	t.Helper()
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i * 7)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 80, Payload: buffer.MakeWithData(data)})
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: seq, AckNum: 7, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000, Checksum: 0x1234})
	ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
	ip.Encode(&header.IPv6Fields{PayloadLength: uint16(header.TCPMinimumSize + payload), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(testSvc.As16()), DstAddr: tcpip.AddrFrom16(testPeer.As16())})
	pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: uint16(mss), L3HdrLen: header.IPv6MinimumSize, MaxSize: gsoMaxSize}
	return pkt
}

// TestCutter cuts one packet into segments as a NIC's TSO would: each with
// its own sequence number, length and checksum, FIN and PSH on the last,
// CWR on the first; a buffer too small for the next segment is refused.
func TestCutter(t *testing.T) {
	const payload, mss, seq = 3000, 1200, 1 << 31
	pkt := gsoPacket(t, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin|header.TCPFlagCwr, seq, payload, mss)
	if n := segments(pkt); n != 3 {
		t.Fatalf("segments = %d, want 3", n)
	}
	var c cutter
	if !c.start(pkt, segments(pkt)) {
		t.Fatal("start refused a TCP packet")
	}
	if n, _ := c.cut(make([]byte, 40+20+mss-1)); n != -1 {
		t.Fatalf("cut into a buffer one byte short: %d, want -1", n)
	}
	want := []struct {
		seq   uint32
		size  int
		flags header.TCPFlags
	}{
		{seq, mss, header.TCPFlagAck | header.TCPFlagCwr},
		{seq + mss, mss, header.TCPFlagAck},
		{seq + 2*mss, payload - 2*mss, header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin},
	}
	for i, w := range want {
		buf := make([]byte, 2048)
		n, done := c.cut(buf)
		if n != 60+w.size || done != (i == len(want)-1) {
			t.Fatalf("segment %d: %d bytes, done %v; want %d, done %v", i, n, done, 60+w.size, i == len(want)-1)
		}
		p := buf[:n]
		tcp := header.TCP(p[40:])
		if got := header.IPv6(p).PayloadLength(); int(got) != 20+w.size {
			t.Errorf("segment %d: payload length %d, want %d", i, got, 20+w.size)
		}
		if tcp.SequenceNumber() != w.seq || tcp.Flags() != w.flags {
			t.Errorf("segment %d: seq %d flags %v, want %d %v", i, tcp.SequenceNumber(), tcp.Flags(), w.seq, w.flags)
		}
		if !l4ChecksumOK(p) {
			t.Errorf("segment %d: bad checksum", i)
		}
		off := int(w.seq - seq)
		for j, b := range p[60:] {
			if b != byte((off+j)*7) {
				t.Fatalf("segment %d: payload byte %d is %d, want %d", i, j, b, byte((off+j)*7))
			}
		}
	}
	if c.pkt != nil {
		t.Error("the cutter kept the packet after its last segment")
	}

	// A bare ACK (no payload) is one segment, its checksum completed.
	ack := gsoPacket(t, header.TCPFlagAck, 5, 0, mss)
	addrs := bytes.Clone(ack.NetworkHeader().Slice()[8:40])
	if !c.start(ack, segments(ack)) {
		t.Fatal("start refused a bare ACK")
	}
	buf := make([]byte, 2048)
	n, done := c.cut(buf)
	if n != 60 || !done || !l4ChecksumOK(buf[:n]) || !bytes.Equal(buf[8:40], addrs) {
		t.Errorf("bare ACK: %d bytes, done %v, checksum ok %v", n, done, l4ChecksumOK(buf[:max(n, 0)]))
	}
}

// TestGSOSmallMSS downloads from the gateway to a peer that announces an
// MSS of 300 bytes: gVisor's 64 KiB packets then cut into ~220 segments,
// more than the outbound queue's room, and each must still be queued (a
// sender waiting for room it can never get would hold its TCP endpoint,
// and every flow on its processor, for good).
func TestGSOSmallMSS(t *testing.T) {
	gw, r := newTestStack(t, Config{})
	msg := serveDownload(r, 9, 1<<20)
	p := newPeerStack(t, gw, testPeer)
	var wq waiter.Queue
	ep, tcperr := p.s.NewEndpoint(tcp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if tcperr != nil {
		t.Fatal(tcperr)
	}
	if err := ep.SetSockOptInt(tcpip.MaxSegOption, 300); err != nil {
		t.Fatal(err)
	}
	we, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	switch err := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom16(testSvc.As16()), Port: 9}); err.(type) {
	case nil, *tcpip.ErrConnectStarted:
	default:
		t.Fatal(err)
	}
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("connect timed out")
	}
	c := gonet.NewTCPConn(&wq, ep)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %d bytes, want the %d sent, in order", len(got), len(msg))
	}
}
