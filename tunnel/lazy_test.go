package tunnel

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// initiation builds a handshake initiation to the gateway key gw that
// claims the static key claim, sealed now, following the initiator's steps
// in the WireGuard whitepaper (5.4.2). With priv (claim's private key) the
// timestamp is sealed as a real peer seals it; without it, with a secret
// only an impostor would have.
func initiation(t testing.TB, gw, claim wgtypes.Key, priv *wgtypes.Key) []byte {
	t.Helper()
	return initiationAt(t, gw, claim, priv, time.Now())
}

// tai64n encodes t as a TAI64N timestamp.
func tai64n(t time.Time) []byte {
	ts := make([]byte, 12)
	binary.BigEndian.PutUint64(ts, tai64nBase+uint64(t.Unix()))
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond()))
	return ts
}

// initiationAt is initiation with the time the peer's clock seals.
func initiationAt(t testing.TB, gw, claim wgtypes.Key, priv *wgtypes.Key, sealed time.Time) []byte {
	t.Helper()
	msg := make([]byte, device.MessageInitiationSize)
	binary.LittleEndian.PutUint32(msg, device.MessageInitiationType)
	rand.Read(msg[4:8])
	eph, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	ephPub := eph.PublicKey()
	copy(msg[initEphemeral:], ephPub[:])
	var hash, ck [blake2s.Size]byte
	var key [chacha20poly1305.KeySize]byte
	var nonce [chacha20poly1305.NonceSize]byte
	mixHash(&hash, &device.InitialHash, gw[:])
	mixHash(&hash, &hash, ephPub[:])
	device.KDF1(&ck, device.InitialChainKey[:], ephPub[:])
	ss, err := curve25519.X25519(eph[:], gw[:])
	if err != nil {
		t.Fatal(err)
	}
	device.KDF2(&ck, &key, ck[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	aead.Seal(msg[initStatic:initStatic], nonce[:], claim[:], hash[:])
	mixHash(&hash, &hash, msg[initStatic:initTimestamp])
	ss = make([]byte, 32)
	rand.Read(ss)
	if priv != nil {
		if ss, err = curve25519.X25519(priv[:], gw[:]); err != nil {
			t.Fatal(err)
		}
	}
	device.KDF2(&ck, &key, ck[:], ss)
	aead, _ = chacha20poly1305.New(key[:])
	aead.Seal(msg[initTimestamp:initTimestamp], nonce[:], tai64n(sealed), hash[:])
	setMAC1(msg, gw)
	return msg
}

// setMAC1 sets msg's MAC1 as a message to the gateway key gw carries.
func setMAC1(msg []byte, gw wgtypes.Key) {
	var mac1Key [blake2s.Size]byte
	d, _ := blake2s.New256(nil)
	d.Write([]byte(device.WGLabelMAC1))
	d.Write(gw[:])
	d.Sum(mac1Key[:0])
	m, _ := blake2s.New128(mac1Key[:])
	m.Write(msg[:initMAC1])
	m.Sum(msg[initMAC1:initMAC1])
}

// newKey returns a fresh private key.
func newKey(tb testing.TB) wgtypes.Key {
	tb.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// lazyTunnel starts a real device with one configured peer, not loaded,
// and returns it with the gateway's and the peer's private keys.
func lazyTunnel(tb testing.TB) (tn *Tunnel, gw, peer wgtypes.Key) {
	tb.Helper()
	gw, peer = newKey(tb), newKey(tb)
	tn, err := New(Config{PrivateKey: gw, TUN: tuntest.NewChannelTUN().TUN()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tn.Close() })
	if err := tn.SetPeers([]Peer{{PublicKey: peer.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("fdaa::100/120")}}}); err != nil {
		tb.Fatal(err)
	}
	return tn, gw, peer
}

// TestAdmitLoadsOnlyProvenPeers feeds admit initiations for a configured
// peer, from the peer and from impostors, and checks which ones load it
// into the real wireguard-go device. The real clients' initiations are
// covered end to end by TestLazyPeers.
func TestAdmitLoadsOnlyProvenPeers(t *testing.T) {
	tn, gwKey, peer := lazyTunnel(t)
	stranger := newKey(t)
	gw := gwKey.PublicKey()
	otherGW := newKey(t).PublicKey()
	badMAC := initiation(t, gw, peer.PublicKey(), &peer)
	badMAC[initMAC1] ^= 1
	// Sealed for another gateway's key, with a MAC1 that passes here.
	misdirected := initiation(t, otherGW, peer.PublicKey(), &peer)
	setMAC1(misdirected, gw)
	for _, c := range []struct {
		name string
		msg  []byte
	}{
		{"impostor claiming the peer's key", initiation(t, gw, peer.PublicKey(), nil)},
		{"real key, not configured", initiation(t, gw, stranger.PublicKey(), &stranger)},
		{"sealed for another gateway", misdirected},
		{"bad MAC1", badMAC},
		{"truncated", initiation(t, gw, peer.PublicKey(), &peer)[:100]},
	} {
		tn.admit(c.msg)
		if ls := tn.Loads(); ls.Loaded != 0 {
			t.Fatalf("%s: loaded the peer (%+v)", c.name, ls)
		}
	}
	tn.admit(initiation(t, gw, peer.PublicKey(), &peer))
	dev, err := tn.deviceStats()
	if err != nil {
		t.Fatal(err)
	}
	if ls := tn.Loads(); ls.Loaded != 1 || ls.Loads != 1 || len(dev) != 1 || dev[0].PublicKey != peer.PublicKey() {
		t.Fatalf("after the peer's own initiation: loads %+v, device peers %+v; want the peer loaded once", ls, dev)
	}
	tn.admit(initiation(t, gw, peer.PublicKey(), &peer))
	if ls := tn.Loads(); ls.Loads != 1 {
		t.Errorf("a second initiation loaded the peer again: %+v", ls)
	}
}

// TestAdmitRefusesReplays unloads a peer its initiation loaded and offers
// admit that initiation again, one checked while the peer was loaded
// (whose handshake never completed), older ones and a newer one, with a
// real wireguard-go device: only the newer one loads it.
func TestAdmitRefusesReplays(t *testing.T) {
	tn, gwKey, peer := lazyTunnel(t)
	gw := gwKey.PublicKey()
	sealed := time.Now().Add(-time.Hour) // the peer's clock is an hour behind
	first := initiationAt(t, gw, peer.PublicKey(), &peer, sealed)
	if _, _, ok := tn.admit(first); !ok || tn.Loads().Loads != 1 {
		t.Fatalf("the peer's first initiation did not load it: %+v", tn.Loads())
	}
	later := initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(3*time.Minute))
	if _, _, ok := tn.admit(later); !ok || tn.Loads().Loads != 1 {
		t.Fatalf("an initiation from the loaded peer: ok %v, %+v; want passed, no second load", ok, tn.Loads())
	}
	if err := tn.sweep(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		msg  []byte
	}{
		{"the first initiation", first},
		{"the one checked while loaded", later},
		{"one sealed a minute earlier", initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(-time.Minute))},
		{"one sealed between the two", initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(time.Minute))},
	} {
		if _, _, ok := tn.admit(c.msg); ok {
			t.Errorf("%s passed", c.name)
		}
	}
	if ls := tn.Loads(); ls.Loaded != 0 || ls.Loads != 1 || ls.Unloads != 1 || ls.Replays != 4 {
		t.Fatalf("Loads() = %+v, want 1 load, 1 unload, 4 replays refused", ls)
	}
	if _, _, ok := tn.admit(initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(3*time.Minute+2*time.Second))); !ok || tn.Loads().Loads != 2 {
		t.Fatalf("a newer initiation did not load the peer: %+v", tn.Loads())
	}
}

// TestCheckHandsBackOnce runs the checker's decisions (check) on a real
// device: a withheld initiation is handed back to wireguard-go once, never
// a copy of it or an older one, whatever address they come from; one from
// a sender that is not a configured peer is left to wireguard-go. A peer
// loaded by an outbound packet (no initiation yet) is held to its replay
// floor all the same.
func TestCheckHandsBackOnce(t *testing.T) {
	tn, gwKey, peer := lazyTunnel(t)
	gw := gwKey.PublicKey()
	e := tn.table.Load().byKey[peer.PublicKey()]
	laptop := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("127.0.0.1:40000")}
	replayer := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("127.0.0.1:40001")}
	held := func(msg []byte, ep conn.Endpoint) *heldInitiation {
		h := &heldInitiation{ep: ep}
		copy(h.msg[:], msg)
		return h
	}
	sealed := time.Now().Add(-time.Minute)
	first := initiationAt(t, gw, peer.PublicKey(), &peer, sealed)
	if !tn.check(held(first, laptop)) {
		t.Fatal("the first initiation was not handed back")
	}
	if !e.loaded.Load() {
		t.Fatal("the first initiation did not load its peer")
	}
	for _, ep := range []conn.Endpoint{replayer, laptop} {
		if tn.check(held(first, ep)) {
			t.Fatalf("a copy of a handed-back initiation, from %v, was handed back again", ep)
		}
	}
	if tn.check(held(initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(-time.Second)), laptop)) {
		t.Fatal("an initiation older than one handed back was handed back")
	}
	second := initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(10*time.Second))
	if !tn.check(held(second, replayer)) {
		t.Fatal("the loaded peer's next initiation, from a new address, was not handed back")
	}
	stranger := newKey(t)
	if !tn.check(held(initiation(t, gw, stranger.PublicKey(), &stranger), laptop)) {
		t.Fatal("an initiation from a peer not configured here (one set by hand?) was not left to wireguard-go")
	}

	if err := tn.sweep(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if e.loaded.Load() {
		t.Fatal("the sweep did not unload the idle peer")
	}
	if err := tn.load(e, time.Time{}); err != nil { // as an outbound packet loads it
		t.Fatal(err)
	}
	for _, msg := range [][]byte{first, second} {
		if tn.check(held(msg, replayer)) {
			t.Fatal("a replay to a peer loaded by an outbound packet was handed back")
		}
	}
	if ls := tn.Loads(); ls.Replays != 2 || ls.Loads != 2 {
		t.Fatalf("Loads() = %+v, want two replays refused, two loads", ls)
	}
	if !tn.check(held(initiationAt(t, gw, peer.PublicKey(), &peer, sealed.Add(20*time.Second)), laptop)) {
		t.Fatal("the peer's next initiation was not handed back")
	}
}

// TestSweepSparesCheckedInitiation: a peer whose initiation was just
// handed back is not swept, however old its load and last handshake (the
// handshake is noted only with the first data packet after it); a replay
// of that initiation does not keep an idle peer loaded.
func TestSweepSparesCheckedInitiation(t *testing.T) {
	tn, gwKey, peer := lazyTunnel(t)
	gw := gwKey.PublicKey()
	e := tn.table.Load().byKey[peer.PublicKey()]
	ep := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("127.0.0.1:40000")}
	check := func(msg []byte) bool {
		h := &heldInitiation{ep: ep}
		copy(h.msg[:], msg)
		return tn.check(h)
	}
	age := func(d time.Duration) { // as if the load and checks were d ago
		tn.mu.Lock()
		defer tn.mu.Unlock()
		e.loadedAt = e.loadedAt.Add(-d)
		e.sealedAt = e.sealedAt.Add(-d)
	}
	if !check(initiationAt(t, gw, peer.PublicKey(), &peer, time.Now().Add(-time.Minute))) {
		t.Fatal("the first initiation was not handed back")
	}
	age(10 * time.Minute)
	fresh := initiation(t, gw, peer.PublicKey(), &peer)
	if !check(fresh) {
		t.Fatal("a newer initiation was not handed back")
	}
	if err := tn.sweep(time.Now().Add(unloadAfter - time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !e.loaded.Load() {
		t.Fatal("the sweep unloaded a peer whose initiation was handed back a moment ago")
	}
	age(10 * time.Minute)
	if check(fresh) {
		t.Fatal("a replay was handed back")
	}
	if err := tn.sweep(time.Now()); err != nil {
		t.Fatal(err)
	}
	if e.loaded.Load() {
		t.Fatal("a replay kept an idle peer loaded")
	}
}

// TestReplayFloor checks where an unload leaves a peer's floor, in the
// peer's clock: replayMargin past its last handshake, never later than
// replayGuard ago, never below the latest initiation checked, never lower
// than before.
func TestReplayFloor(t *testing.T) {
	at := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC) // our clock at admission
	skew := -time.Hour                                   // the peer's clock, an hour behind
	sealed := at.Add(skew)
	for _, c := range []struct {
		name      string
		floor     time.Time // before
		last, now time.Time
		want      time.Time
	}{
		{"idle unload", time.Time{}, at.Add(10 * time.Minute), at.Add(16 * time.Minute), sealed.Add(11 * time.Minute)},
		{"no handshake at all", time.Time{}, time.Time{}, at.Add(6 * time.Minute), sealed.Add(replayMargin)},
		{"the latest initiation's handshake never completed", time.Time{}, at.Add(-5 * time.Minute), at.Add(6 * time.Minute), sealed.Add(replayMargin)},
		{"removed right after a handshake", time.Time{}, at.Add(10 * time.Minute), at.Add(10*time.Minute + 30*time.Second), sealed.Add(10*time.Minute + 30*time.Second - replayGuard)},
		{"removed at once", time.Time{}, time.Time{}, at, sealed},
		{"higher floor kept", sealed.Add(time.Hour), at.Add(10 * time.Minute), at.Add(16 * time.Minute), sealed.Add(time.Hour)},
	} {
		e := &lazyPeer{sealed: sealed, sealedAt: at, floor: c.floor}
		e.raiseFloorLocked(c.last, c.now)
		if !e.floor.Equal(c.want) {
			t.Errorf("%s: floor %v, want %v", c.name, e.floor, c.want)
		}
	}
	var never lazyPeer // no initiation checked: no clock to go by
	never.raiseFloorLocked(at, at.Add(time.Hour))
	if !never.floor.IsZero() {
		t.Errorf("a peer never loaded by an initiation got floor %v", never.floor)
	}
	for _, c := range []struct {
		ts   []byte
		want time.Time
	}{
		{tai64n(sealed), sealed},
		{make([]byte, 12), time.Unix(0, 0)},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, time.Unix(1<<40, 999_999_999)},
	} {
		if got := tai64nTime(c.ts); !got.Equal(c.want) {
			t.Errorf("tai64nTime(%x) = %v, want %v", c.ts, got, c.want)
		}
	}
}

func TestPeerTableOwner(t *testing.T) {
	pt := newPeerTable(2)
	wide := &lazyPeer{allowed: []netip.Prefix{netip.MustParsePrefix("fdaa::/64")}}
	narrow := &lazyPeer{allowed: []netip.Prefix{netip.MustParsePrefix("fdaa::100/120"), netip.MustParsePrefix("10.0.0.0/8")}}
	wide.key[0], narrow.key[0] = 1, 2
	pt.byKey[wide.key], pt.byKey[narrow.key] = wide, narrow
	pt.index()
	for addr, want := range map[string]*lazyPeer{"fdaa::1": wide, "fdaa::1ff": narrow, "fdab::1": nil} {
		if got := pt.owner(netip.MustParseAddr(addr)); got != want {
			t.Errorf("owner(%s) = %p, want %p", addr, got, want)
		}
	}
}

// BenchmarkAdmit measures the checker's work for an initiation from a peer
// that is not loaded, including loading it into the device ("load"), and
// from a loaded one ("loaded", the check every later handshake pays). It
// runs beside the receive path, which only copies the initiation.
func BenchmarkAdmit(b *testing.B) {
	tn, gwKey, peer := lazyTunnel(b)
	tn.responder.limit.SetLimit(rate.Inf)
	msg := initiation(b, gwKey.PublicKey(), peer.PublicKey(), &peer)
	b.Run("load", func(b *testing.B) {
		for range b.N {
			tn.admit(msg)
			b.StopTimer()
			// The next load needs an initiation sealed after this
			// one's unload (replay.go).
			msg = initiationAt(b, gwKey.PublicKey(), peer.PublicKey(), &peer, time.Now().Add(time.Hour))
			if tn.Loads().Loaded != 1 {
				b.Fatal("peer not loaded")
			}
			if err := tn.sweep(time.Now().Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("loaded", func(b *testing.B) {
		tn.admit(msg)
		for range b.N {
			tn.admit(msg)
		}
	})
}

// FuzzAdmit feeds the checker arbitrary initiations that pass MAC1, as
// anyone who knows the gateway's public key can send: none may load the
// configured peer (only its key's holder can), and none may panic.
func FuzzAdmit(f *testing.F) {
	tn, gwKey, peer := lazyTunnel(f)
	tn.responder.limit.SetLimit(rate.Inf)
	gw := gwKey.PublicKey()
	f.Add(initiation(f, gw, peer.PublicKey(), nil))
	f.Add(make([]byte, device.MessageInitiationSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		// Every input becomes an initiation that passes MAC1, so each one
		// reaches the Noise steps (lengths are TestAdmitLoadsOnlyProvenPeers').
		msg := make([]byte, device.MessageInitiationSize)
		copy(msg, in)
		binary.LittleEndian.PutUint32(msg, device.MessageInitiationType)
		setMAC1(msg, gw)
		tn.admit(msg)
		if ls := tn.Loads(); ls.Loaded != 0 {
			t.Fatalf("a message without the peer's key loaded it: %x", msg)
		}
	})
}

func TestReadUAPISet(t *testing.T) {
	req := "set=1\npublic_key=" + strings.Repeat("ab", 32) + "\nallowed_ip=fd00::/64\n\n"
	r := bufio.NewReader(strings.NewReader(req[len("set=1\n"):] + "get=1\n\n"))
	got, err := readUAPISet(r)
	if err != nil || string(got) != req[len("set=1\n"):] {
		t.Fatalf("readUAPISet = %q, %v; want the set's lines through the blank one", got, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "get=1\n\n" {
		t.Errorf("left %q for the next request, want the get", rest)
	}
	// A line longer than the reader's buffer is not mistaken for the end.
	long := "allowed_ip=" + strings.Repeat("x", 5000) + "\n\n"
	if got, err := readUAPISet(bufio.NewReader(strings.NewReader(long))); err != nil || string(got) != long {
		t.Errorf("long line: %d bytes, %v; want %d", len(got), err, len(long))
	}
	// An endless request is cut off with an errno for the client.
	_, err = readUAPISet(bufio.NewReader(strings.NewReader(strings.Repeat("allowed_ip=fd00::/64\n", maxUAPISet/20))))
	var ue uapiError
	if !errors.As(err, &ue) || ue.ErrorCode() >= 0 {
		t.Errorf("oversized set: %v, want a uapiError with a negative errno", err)
	}
}
