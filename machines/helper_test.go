package machines

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the machine: TestMain runs childMain instead of
// the tests when childModeEnv is set. Settings come from environment
// variables so that they travel through Spec.Env like a real machine's.
const (
	childModeEnv    = "MACHINES_TEST_CHILD" // "serve", "sleep" or "spawn"
	childIgnoreTerm = "CHILD_IGNORE_TERM"   // "1": ignore SIGTERM
	childExitAfter  = "CHILD_EXIT_AFTER_MS" // exit after this many ms
	childExitCode   = "CHILD_EXIT_CODE"     // with this code
	childSpamLines  = "CHILD_SPAM_LINES"    // write this many 100-byte lines
	childLifetime   = 2 * time.Minute       // no test child outlives a crashed test for long
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		childMain(mode)
		return
	}
	os.Exit(m.Run())
}

func childMain(mode string) {
	time.AfterFunc(childLifetime, func() { os.Exit(99) })
	if os.Getenv(childIgnoreTerm) == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	if n, _ := strconv.Atoi(os.Getenv(childSpamLines)); n > 0 {
		line := strings.Repeat("x", 99) + "\n"
		for range n {
			os.Stdout.WriteString(line)
		}
	}
	if ms, err := strconv.Atoi(os.Getenv(childExitAfter)); err == nil {
		code, _ := strconv.Atoi(os.Getenv(childExitCode))
		time.AfterFunc(time.Duration(ms)*time.Millisecond, func() { os.Exit(code) })
	}
	switch mode {
	case "serve":
		serveEcho()
	case "spawn":
		// Start a grandchild in our process group, report its pid, wait.
		gc := exec.Command(os.Args[0])
		gc.Env = append(os.Environ(), childModeEnv+"=sleep")
		if err := gc.Start(); err != nil {
			fmt.Println("spawn:", err)
			os.Exit(1)
		}
		fmt.Println(gc.Process.Pid)
		select {}
	default: // "sleep"
		select {}
	}
}

// serveEcho answers "env NAME" with $NAME and echoes any other line.
func serveEcho() {
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(2)
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				line := sc.Text()
				if name, ok := strings.CutPrefix(line, "env "); ok {
					line = os.Getenv(name)
				}
				fmt.Fprintln(c, line)
			}
		}()
	}
}

// childCommand is the argv that runs this test binary as a machine.
func childCommand(t testing.TB) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
