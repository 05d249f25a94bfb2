package flycast

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// testEndpoint serves the test machines' paths that exercise HTTP message
// shapes. It reports whether it served r.
func testEndpoint(w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Path {
	case "/echo": // the method, the framing the machine saw, and the body
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return true
		}
		fmt.Fprintf(w, "%s cl=%d te=%v %s", r.Method, r.ContentLength, r.TransferEncoding, b)
	case "/stream": // a chunked answer in three flushed parts
		for i := range 3 {
			fmt.Fprintf(w, "part%d;", i)
			w.(http.Flusher).Flush()
		}
	case "/trailer":
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Sum", "42")
	case "/empty":
		w.WriteHeader(http.StatusNoContent)
	case "/early": // an informational answer first
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "after hints")
	case "/unframed": // no length, no chunks: the body ends at close
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return true
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
		brw.Flush()
	case "/stale": // a keep-alive answer, then the machine drops the conn
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return true
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
		brw.Flush()
		c.Close()
	case "/upgrade": // a protocol switch, then a line echo
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return true
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return true
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return true
		}
		brw.WriteString("echo: " + strings.ToUpper(line))
		brw.Flush()
	case "/hop": // hop-by-hop fields that must not reach the client
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		io.WriteString(w, "hop")
	default:
		return false
	}
	return true
}

// readResponses reads n responses from br, bodies included.
func readResponses(br *bufio.Reader, method string, n int) ([]*http.Response, []string, error) {
	var resps []*http.Response
	var bodies []string
	for range n {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return resps, bodies, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return resps, bodies, err
		}
		resps = append(resps, resp)
		bodies = append(bodies, string(b))
	}
	return resps, bodies, nil
}
