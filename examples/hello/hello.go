// Package hello is devgate's stand-in for the nginxdemos/hello image: a page
// that says which machine answered, from which address, for which request,
// so that a user can watch Flycast wake and balance machines with curl.
// /ws is a WebSocket echo, to show upgrades pass through the proxy.
//
// It owns only its HTTP server. It must never import devgate's own packages:
// it plays the part of an arbitrary user app, which knows devgate only
// through the environment variables a machine is given.
package hello

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"os"
	"sort"
	"time"

	"golang.org/x/net/websocket"
)

// Server limits. A client of the example is anyone on the private network,
// so slow or oversized requests are cut off.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// maxWSMessage bounds one message the WebSocket echo takes.
	maxWSMessage = 64 << 10
	// shutdownTimeout bounds how long Run waits for requests in flight
	// after its context ends.
	shutdownTimeout = 5 * time.Second
)

// page is what the handler renders.
type page struct {
	Machine, ServerName, ServerAddress, MachineID, App, Region string
	URI, ClientAddress, Date                                   string
	// Headers are the request's headers, sorted, so that a user can see
	// what the proxy added (Fly-Request-Id, X-Forwarded-For, Via, ...).
	Headers []string
}

var pageTmpl = template.Must(template.New("hello").Parse(`<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Hello from {{.Machine}}</title></head>
<body>
<h1>Hello from {{.Machine}}</h1>
<table>
<tr><th>Server name</th><td>{{.ServerName}}</td></tr>
<tr><th>Server address</th><td>{{.ServerAddress}}</td></tr>
<tr><th>Machine ID</th><td>{{.MachineID}}</td></tr>
<tr><th>App</th><td>{{.App}}</td></tr>
<tr><th>Region</th><td>{{.Region}}</td></tr>
<tr><th>Request URI</th><td>{{.URI}}</td></tr>
<tr><th>Client address</th><td>{{.ClientAddress}}</td></tr>
<tr><th>Date</th><td>{{.Date}}</td></tr>
</table>
<h2>Request headers</h2>
<pre>{{range .Headers}}{{.}}
{{end}}</pre>
</body>
</html>
`))

// Handler serves the hello page on every path but /healthz, which answers
// 200 "ok", and /ws, a WebSocket echo. It reads the machine's identity from the environment
// (FLY_MACHINE_ID, FLY_APP_NAME, FLY_REGION) when called.
func Handler() http.Handler {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	id := os.Getenv("FLY_MACHINE_ID")
	machine := id
	if machine == "" {
		machine = host
	}
	base := page{
		Machine:    machine,
		ServerName: host,
		MachineID:  id,
		App:        os.Getenv("FLY_APP_NAME"),
		Region:     os.Getenv("FLY_REGION"),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})
	mux.Handle("/ws", websocket.Server{
		// Any origin: the echo serves no cookies or credentials, so a page
		// elsewhere gains nothing by using it.
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler:   echo,
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		p := base
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			p.ServerAddress = a.String()
		}
		p.URI = r.RequestURI
		p.ClientAddress = r.RemoteAddr
		p.Date = time.Now().UTC().Format(time.RFC1123)
		for k, vs := range r.Header {
			for _, v := range vs {
				p.Headers = append(p.Headers, k+": "+v)
			}
		}
		sort.Strings(p.Headers)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store") // every answer may come from another machine
		// The template cannot fail on these fields, so an error here is a
		// client that went away; with headers sent there is nothing to do.
		pageTmpl.Execute(w, p)
	})
	return mux
}

// wsFrame is one WebSocket message with its type (text or binary).
type wsFrame struct {
	data []byte
	typ  byte
}

// frameCodec reads and writes messages keeping their type, so the echo
// answers text with text and binary with binary.
var frameCodec = websocket.Codec{
	Marshal: func(v any) ([]byte, byte, error) {
		f := v.(*wsFrame)
		return f.data, f.typ, nil
	},
	Unmarshal: func(data []byte, typ byte, v any) error {
		f := v.(*wsFrame)
		f.data, f.typ = data, typ
		return nil
	},
}

// echo sends every message back until the client closes, sends a message
// over maxWSMessage, or stays silent for idleTimeout.
func echo(ws *websocket.Conn) {
	defer ws.Close()
	ws.MaxPayloadBytes = maxWSMessage
	for {
		ws.SetDeadline(time.Now().Add(idleTimeout))
		var f wsFrame
		if err := frameCodec.Receive(ws, &f); err != nil {
			return
		}
		if err := frameCodec.Send(ws, &f); err != nil {
			return
		}
	}
}

// ListenAddr is where Run listens by default: ":$PORT" when PORT is set
// (as devgate's process driver sets it), else ":80" like the image.
func ListenAddr() string {
	if port := os.Getenv("PORT"); port != "" {
		return ":" + port
	}
	return ":80"
}

// Run listens on addr (ListenAddr() when empty) and serves Handler until
// ctx ends, then shuts down gracefully. It returns nil after a clean
// shutdown.
func Run(ctx context.Context, addr string, logf func(format string, args ...any)) error {
	if addr == "" {
		addr = ListenAddr()
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("hello: listen on %s: %w (set PORT to use another port)", addr, err)
	}
	return Serve(ctx, l, logf)
}

// Serve is Run on a listener made elsewhere; it closes l.
func Serve(ctx context.Context, l net.Listener, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	srv := &http.Server{
		Handler:           Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	logf("hello: serving on %s", l.Addr())
	select {
	case err := <-errc:
		return fmt.Errorf("hello: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("hello: serve: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("hello: shutdown: %w", err)
	}
	logf("hello: stopped")
	return nil
}
