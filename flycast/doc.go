// Package flycast is devgate's Flycast proxy: a TCP connection to (Flycast
// address, port) finds the app's service, the balancer picks the least
// loaded started machine, and when none is started the proxy wakes one and
// holds the client's SYN until the backend accepts. Machines that stay idle
// are stopped again.
//
// It owns the runtime state of machines (open connections, in-flight
// requests, last activity, wakes in progress), the state transitions it
// persists through MachineStore (starting, started, stopping, stopped,
// failed), the per-app wait queues, and the handlers (raw TCP splice, http,
// proxy_proto). It reads state only from store.Snapshot values handed to
// Update and starts and stops machines only through machines.Driver.
//
// It must never import the CLI, the API, the tunnel or the netstack
// implementation: it sees the network only as netstack.TCPRequest values and
// net.Conn, so tests run it on 127.0.0.1.
//
// Handlers: none (raw TCP), "http" (HTTP/1.1 reverse proxy, balanced per
// request), "proxy_proto" (PROXY v1/v2 header, then raw TCP). "tls" is passed
// through as raw TCP: TLS termination is out of scope, and a port whose
// handlers include "tls" is always spliced, even with "http".
package flycast
