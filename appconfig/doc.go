// Package appconfig reads fly.toml exactly as Fly writes it, and writes new
// ones the way `fly launch` does.
//
// Parse turns the bytes of a fly.toml into a Config, a list of Warnings
// (unknown keys, which flyctl also tolerates) and an error that names the
// file, the line and the key of every problem, e.g.
//
//	fly.toml:12: http_service.internal_port: must be 1..65535, got 0
//
// Config.Services gives the proxy a normalised view: [http_service] becomes a
// service with port 80 (handlers http) and port 443 (handlers tls, http), as
// Fly does, and every default is filled in.
//
// Defaults, following Fly's documentation:
//   - kill_signal SIGINT, kill_timeout 5s;
//   - auto_stop_machines "off" and auto_start_machines true when a service
//     sets neither (Fly: "The default settings for apps that don't specify any
//     auto start and stop settings are auto_start_machines = true and
//     auto_stop_machines = false"); true means "stop", false means "off";
//   - concurrency type "connections", soft_limit 20, hard_limit 25. When only
//     one limit is written the other is chosen so that soft <= hard;
//   - internal_port 8080, protocol "tcp";
//   - proxy_proto_options.version "v1" when a port uses the proxy_proto handler.
//
// devgate extension: a [devgate] table that only devgate reads (flyctl ignores
// unknown tables, so the same file still deploys to Fly):
//
//	[devgate]
//	  idle_timeout = "5m"  # Go duration: idle time before auto-stop
//
// A Config is read-only: it never re-serialises, and devgate never rewrites a
// fly.toml on disk. The only writer is Generate, used once for a new app by
// `devgate launch`. Tables that devgate does not use ([[vm]], [checks],
// [deploy], [mounts]) are kept as decoded values so that callers can show
// them, but they are never written back.
//
// This package owns the fly.toml schema and nothing else. It must never
// import the store, the proxy (flycast), the network stack, the API or the
// CLI: it is a pure function of bytes, so every other package can use it.
package appconfig
