package flycast

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	wakes       *prometheus.CounterVec
	wakeSeconds *prometheus.HistogramVec
	connections *prometheus.CounterVec
	requests    *prometheus.CounterVec
	queueDepth  *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	handOffs    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgate_wakes_total", Help: "Machine wakes by app and result (ok, failed).",
		}, []string{"app", "result"}),
		wakeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devgate_wake_seconds",
			Help:    "Time from wake to the machine accepting connections.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"app"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgate_connections_total", Help: "Proxied TCP connections by app and machine.",
		}, []string{"app", "machine"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgate_requests_total", Help: "Proxied HTTP requests by app, machine and status code.",
		}, []string{"app", "machine", "code"}),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "devgate_queue_depth", Help: "Connections waiting for a machine below its hard limit.",
		}, []string{"app"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgate_refused_total", Help: "Connections and requests refused, by app and reason.",
		}, []string{"app", "reason"}),
		handOffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devgate_http_handoffs_total",
			Help: "HTTP connections the fast path handed to net/http: HTTP/1.0, Upgrade, Expect, CONNECT, or a request it refuses.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.wakes, m.wakeSeconds, m.connections, m.requests, m.queueDepth, m.refused, m.handOffs} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// refuseReason names an acquire error for devgate_refused_total.
func refuseReason(err error) string {
	switch {
	case errors.Is(err, ErrAutoStartOff):
		return "autostart_off"
	case errors.Is(err, ErrNoMachines):
		return "no_machines"
	case errors.Is(err, ErrWakeFailed):
		return "wake_failed"
	case errors.Is(err, ErrQueueFull):
		return "queue_full"
	case errors.Is(err, ErrQueueTimeout):
		return "queue_timeout"
	case errors.Is(err, ErrClosed):
		return "closed"
	default:
		return "error"
	}
}
