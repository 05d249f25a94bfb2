package store

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	childRoundEnv = "DEVGATE_STORE_CRASH_ROUND"
	// crashChildMaxWrites bounds the child if nobody kills it.
	crashChildMaxWrites = 2000
	crashRounds         = 5
	// crashWaitTimeout bounds how long the parent waits for acknowledgements.
	crashWaitTimeout = 60 * time.Second
)

// crashChild runs in the re-executed test binary: it creates peers and
// prints each one after the store acknowledged it, until it is killed.
func crashChild(dir, round string) int {
	e, err := StartEmbedded(dir, quietLogf)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	nc, err := e.Conn()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	s, err := Open(ctx, nc, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := s.EnsureOrg(ctx, DefaultOrg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("READY")
	for i := range crashChildMaxWrites {
		p, err := s.CreatePeer(ctx, Peer{Org: DefaultOrg, Name: fmt.Sprintf("r%s-%d", round, i), PublicKey: newKey(nil)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		fmt.Printf("ACK %s %s %s\n", p.Name, p.Address, p.PublicKey)
	}
	return 0
}

// TestKill9Durability kills a writer with SIGKILL mid-stream and checks
// that every write it saw acknowledged is there after a restart.
func TestKill9Durability(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	type ack struct {
		addr netip.Addr
		key  string
	}
	acked := map[string]ack{}
	for round := range crashRounds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childDirEnv+"="+dir, fmt.Sprintf("%s=%d", childRoundEnv, round))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 5 + rand.IntN(60)
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		n := 0
		timeout := time.After(crashWaitTimeout)
	read:
		for n < killAfter {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				f := strings.Fields(l)
				if len(f) == 4 && f[0] == "ACK" {
					acked[f[1]] = ack{netip.MustParseAddr(f[2]), f[3]}
					n++
				}
			case <-timeout:
				break read
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Whatever the child printed before it died was acknowledged too.
		for l := range lines {
			if f := strings.Fields(l); len(f) == 4 && f[0] == "ACK" {
				acked[f[1]] = ack{netip.MustParseAddr(f[2]), f[3]}
				n++
			}
		}
		cmd.Wait()
		if n < killAfter {
			t.Fatalf("round %d: child acknowledged only %d writes (wanted %d)", round, n, killAfter)
		}
		t.Logf("round %d: killed after %d acknowledged writes", round, n)

		e, err := StartEmbedded(dir, t.Logf)
		if err != nil {
			t.Fatalf("round %d: restart after kill -9: %v", round, err)
		}
		nc, err := e.Conn()
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(testCtx(t), nc, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ps, err := s.ListPeers(testCtx(t), DefaultOrg)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]Peer{}
		for _, p := range ps {
			got[p.Name] = p
		}
		for name, a := range acked {
			p, ok := got[name]
			if !ok {
				t.Errorf("round %d: acknowledged peer %s lost", round, name)
				continue
			}
			if p.Address != a.addr || p.PublicKey != a.key || p.Org != DefaultOrg || p.CreatedAt.IsZero() {
				t.Errorf("round %d: peer %s = %+v, want address %v key %s", round, name, p, a.addr, a.key)
			}
		}
		// And allocation goes on without reusing an address.
		addrs := map[netip.Addr]string{}
		for _, p := range ps {
			if other, dup := addrs[p.Address]; dup {
				t.Errorf("round %d: %s and %s share %v", round, p.Name, other, p.Address)
			}
			addrs[p.Address] = p.Name
		}
		nc.Close()
		e.Shutdown()
		if t.Failed() {
			return
		}
	}
}
