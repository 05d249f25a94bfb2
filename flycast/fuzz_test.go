package flycast

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzHTTPHandler sends arbitrary bytes as an HTTP request through the
// http handler (route, net/http server, balancer, reverse proxy, a real
// backend). It must never panic, and whatever comes back is HTTP.
func FuzzHTTPHandler(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: hello.flycast\r\n\r\n",
		"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nVia: 1.0 a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"GET http://evil/ HTTP/1.1\r\nHost: \r\n\r\n",
		"CONNECT x:1 HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"\x00\x01\x02garbage",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f, envOpts{started: []string{"m1"}})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := e.dial(httpDst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(data); err != nil {
			return // the server may close early on garbage
		}
		c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(bufio.NewReader(c))
		if len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.")) {
			t.Fatalf("response is not HTTP: %q", out[:min(len(out), 64)])
		}
	})
}
