package hello

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

func TestHandlerPage(t *testing.T) {
	t.Setenv("FLY_MACHINE_ID", "0123456789abcd")
	t.Setenv("FLY_APP_NAME", "hello")
	t.Setenv("FLY_REGION", "dev")
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/some/path?q=<b>")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	page := string(body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
	for _, want := range []string{
		"<title>Hello from 0123456789abcd</title>",
		"<td>hello</td>", "<td>dev</td>",
		"<td>/some/path?q=&lt;b&gt;</td>",               // the request URI, HTML-escaped
		"<td>" + srv.Listener.Addr().String() + "</td>", // server address
		"<td>127.0.0.1:",                                // client address
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "<b>") {
		t.Error("request URI not HTML-escaped")
	}
}

func TestHandlerEscapesURI(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/x", nil)
	req.RequestURI = "/<script>"
	Handler().ServeHTTP(rec, req)
	if body := rec.Body.String(); strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("URI not escaped:\n%s", body)
	}
}

func TestHealthz(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Errorf("healthz = %d %q", rec.Code, rec.Body.String())
	}
}

func TestListenAddr(t *testing.T) {
	t.Setenv("PORT", "")
	if got := ListenAddr(); got != ":80" {
		t.Errorf("no PORT: %q", got)
	}
	t.Setenv("PORT", "8080")
	if got := ListenAddr(); got != ":8080" {
		t.Errorf("PORT=8080: %q", got)
	}
}

func TestRunServesAndShutsDown(t *testing.T) {
	t.Setenv("FLY_MACHINE_ID", "feedfacecafe01")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // Run makes its own listener from the address
	t.Setenv("PORT", addr[strings.LastIndexByte(addr, ':')+1:])

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, "127.0.0.1"+ListenAddr(), t.Logf) }()

	client := &http.Client{Timeout: 10 * time.Second}
	var resp *http.Response
	for range 200 { // bounded: Run may not be listening yet
		if resp, err = client.Get("http://" + addr + "/hi"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "feedfacecafe01") || !strings.Contains(string(body), "<td>/hi</td>") {
		t.Errorf("page:\n%s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := client.Get("http://" + addr + "/"); err == nil {
		t.Error("still serving after shutdown")
	}
}

func TestWebSocketEcho(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	ws, err := websocket.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "", "http://laptop/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	// Text comes back as text and binary as binary.
	if err := websocket.Message.Send(ws, "hello, machine"); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := websocket.Message.Receive(ws, &s); err != nil || s != "hello, machine" {
		t.Fatalf("text echo = %q, %v", s, err)
	}
	if ws.PayloadType != websocket.TextFrame {
		t.Errorf("text echoed as frame type %d", ws.PayloadType)
	}
	var f wsFrame
	if err := websocket.Message.Send(ws, []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := frameCodec.Receive(ws, &f); err != nil || string(f.data) != "\x00\x01\x02" || f.typ != websocket.BinaryFrame {
		t.Fatalf("binary echo = %q type %d, %v", f.data, f.typ, err)
	}
	// A message over the limit ends the connection instead of growing a
	// buffer without bound.
	if err := websocket.Message.Send(ws, make([]byte, maxWSMessage+1)); err != nil {
		t.Fatal(err)
	}
	if err := websocket.Message.Receive(ws, &s); err == nil {
		t.Error("oversized message echoed, want the connection closed")
	}
}
