package gateway

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/devgate/devgate/client"
)

// rawHTTP sends raw bytes to addr through the tunnel and reads one response.
func rawHTTP(t *testing.T, c *client.Client, addr netip.AddrPort, raw string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp, string(body)
}

// TestHostileHTTP sends requests that smuggle, bloat or stall through a
// real tunnel to the Flycast http handler. Each gets a clean refusal and the
// next ordinary request is served.
func TestHostileHTTP(t *testing.T) {
	h := newHarness(t)
	res := h.launch("hello", "")
	c := h.dial(h.peer("personal", "laptop"))
	dst := netip.AddrPortFrom(res.IPs[0].Address, 80)
	if resp, _ := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %s", resp.Status)
	}
	big := strings.Repeat("a", 70<<10)
	for _, tc := range []struct {
		name, raw string
		want      int
	}{
		{"two different Content-Lengths", "POST / HTTP/1.1\r\nHost: hello.flycast\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400},
		{"unknown Transfer-Encoding", "POST / HTTP/1.1\r\nHost: hello.flycast\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 501},
		{"oversized header", "GET / HTTP/1.1\r\nHost: hello.flycast\r\nX-Big: " + big + "\r\n\r\n", 431},
		{"many headers", "GET / HTTP/1.1\r\nHost: hello.flycast\r\n" + strings.Repeat("X-A: b\r\n", 12000) + "\r\n", 431},
		{"no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400},
		{"bad request line", "GET\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawHTTP(t, c, dst, tc.raw)
			if resp.StatusCode != tc.want {
				t.Errorf("%d %q, want %d", resp.StatusCode, body, tc.want)
			}
		})
	}
	// Content-Length with Transfer-Encoding: the request-smuggling shape.
	// net/http alone would drop Content-Length and serve it (RFC 9112
	// allows that); flycast refuses it and closes the connection.
	t.Run("Content-Length with Transfer-Encoding", func(t *testing.T) {
		resp, body := rawHTTP(t, c, dst, "POST / HTTP/1.1\r\nHost: hello.flycast\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		if resp.StatusCode != 400 || !strings.Contains(body, "Content-Length and Transfer-Encoding") {
			t.Errorf("%d %q, want 400 naming both headers", resp.StatusCode, body)
		}
	})
	if resp, _ := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
		t.Errorf("after hostile requests: %s", resp.Status)
	}
}

// TestSlowLoris: a client that trickles its header, a byte at a time, is cut
// off by the handler's ReadHeaderTimeout (flycast's httpReadHeaderTimeout,
// 10s) and never reaches a machine; others are served meanwhile.
func TestSlowLoris(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 10s header timeout")
	}
	h := newHarness(t)
	res := h.launch("hello", "")
	c := h.dial(h.peer("personal", "laptop"))
	dst := netip.AddrPortFrom(res.IPs[0].Address, 80)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: hello.flycast\r\n"); err != nil {
		t.Fatal(err)
	}
	// The reader reports what ended the connection: a response (the
	// handler may answer 408 before closing) or an error.
	type ending struct {
		data string
		err  error
	}
	closed := make(chan ending, 1)
	go func() {
		conn.SetReadDeadline(time.Now().Add(45 * time.Second))
		b, err := io.ReadAll(conn)
		closed <- ending{string(b), err}
	}()
	// Trickle one header line a second (bounded: at most 40) until cut off.
	start := time.Now()
	var cut bool
	for i := 0; i < 40 && !cut; i++ {
		select {
		case e := <-closed:
			if strings.HasPrefix(e.data, "HTTP/1.1 2") {
				t.Fatalf("the slow client was served: %q", e.data)
			}
			var ne net.Error
			if ok := asNetErr(e.err, &ne); ok && ne.Timeout() {
				t.Fatalf("the handler kept the slow client open for 45s: %v", e.err)
			}
			t.Logf("slow client cut off with %q (err %v)", firstLine(e.data), e.err)
			cut = true
		case <-time.After(time.Second):
			if _, err := io.WriteString(conn, "X-Slow: 1\r\n"); err != nil {
				cut = true
			}
			if i == 3 { // meanwhile, an ordinary request is served
				if resp, _ := get(t, c, "http://hello.flycast/"); resp.StatusCode != 200 {
					t.Errorf("ordinary request during slow loris: %s", resp.Status)
				}
			}
		}
	}
	if !cut {
		t.Fatal("a client trickling its header for 40s was never cut off")
	}
	t.Logf("slow-loris client cut off after %s", time.Since(start).Round(time.Second))
}

func asNetErr(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\r'); i >= 0 {
		return s[:i]
	}
	return s
}
