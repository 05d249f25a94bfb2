package appconfig

import (
	"fmt"
	"slices"
	"time"
)

// svcFields are the keys [http_service] and [[services]] share.
type svcFields struct {
	internalPort int
	processes    []string
	autoStop     string
	autoStart    bool
	minRunning   int
	conc         Concurrency
}

func (p *parser) common(s *svcFields) map[string]field {
	d := p.d
	s.internalPort = DefaultInternalPort
	s.autoStop, s.autoStart = "off", true
	s.conc = Concurrency{Type: "connections", Soft: DefaultSoftLimit, Hard: DefaultHardLimit}
	return map[string]field{
		"internal_port": func(path string, v any) {
			if n, ok := d.port(path, v); ok {
				s.internalPort = n
			}
		},
		"processes": func(path string, v any) {
			if l, ok := d.strList(path, v); ok {
				s.processes = l
				p.refs = append(p.refs, procRef{path: path, names: l})
			}
		},
		"auto_stop_machines": func(path string, v any) {
			switch t := v.(type) {
			case bool:
				s.autoStop = map[bool]string{true: "stop", false: "off"}[t]
				return
			case string:
				if t == "off" || t == "stop" || t == "suspend" {
					s.autoStop = t
					return
				}
				d.fail(path, `must be "off", "stop", "suspend", true or false, got %q`, t)
			default:
				d.fail(path, `must be "off", "stop", "suspend", true or false, got %s`, typeName(v))
			}
		},
		"auto_start_machines": func(path string, v any) {
			if b, ok := d.boolean(path, v); ok {
				s.autoStart = b
			}
		},
		"min_machines_running": func(path string, v any) {
			if n, ok := d.integer(path, v, 0, maxMinMachines); ok {
				s.minRunning = n
			}
		},
		"concurrency": func(path string, v any) { p.concurrency(path, v, &s.conc) },
		// Fly keys devgate tolerates without acting on them.
		"machine_checks": ignored,
	}
}

func (p *parser) httpService(path string, v any) {
	m, ok := p.d.tbl(path, v)
	if !ok {
		return
	}
	var s svcFields
	h := &HTTPService{}
	fields := p.common(&s)
	fields["force_https"] = func(path string, v any) {
		if b, ok := p.d.boolean(path, v); ok {
			h.ForceHTTPS = b
		}
	}
	fields["checks"] = func(path string, v any) { h.Checks = p.checks(path, v, "http") }
	fields["http_options"] = ignored
	fields["tls_options"] = ignored
	p.d.table(path, m, fields)
	h.InternalPort, h.Processes = s.internalPort, s.processes
	h.AutoStop, h.AutoStart, h.MinRunning, h.Concurrency = s.autoStop, s.autoStart, s.minRunning, s.conc
	p.c.HTTPService = h
}

func (p *parser) services(path string, v any) {
	list, ok := p.d.tables(path, v)
	if !ok {
		return
	}
	for i, m := range list {
		p.c.ServiceSections = append(p.c.ServiceSections, p.service(fmt.Sprintf("%s[%d]", path, i), m))
	}
}

func (p *parser) service(path string, m map[string]any) Service {
	d := p.d
	var s svcFields
	svc := Service{Protocol: "tcp"}
	fields := p.common(&s)
	fields["protocol"] = func(path string, v any) {
		if str, ok := d.str(path, v); ok {
			if str != "tcp" && str != "udp" {
				d.fail(path, `must be "tcp" or "udp", got %q`, str)
				return
			}
			svc.Protocol = str
		}
	}
	fields["ports"] = func(path string, v any) {
		list, ok := d.tables(path, v)
		if !ok {
			return
		}
		for i, pm := range list {
			if port, ok := p.port(fmt.Sprintf("%s[%d]", path, i), pm); ok {
				svc.Ports = append(svc.Ports, port)
			}
		}
	}
	fields["tcp_checks"] = func(path string, v any) { svc.Checks = append(svc.Checks, p.checks(path, v, "tcp")...) }
	fields["http_checks"] = func(path string, v any) { svc.Checks = append(svc.Checks, p.checks(path, v, "http")...) }
	fields["script_checks"] = ignored
	d.table(path, m, fields)

	if svc.Protocol == "udp" {
		for i, port := range svc.Ports {
			if len(port.Handlers) > 0 {
				d.fail(fmt.Sprintf("%s.ports[%d].handlers", path, i), "udp services take no handlers; remove them or use protocol = \"tcp\"")
			}
		}
	}
	for _, port := range svc.Ports {
		if port.ProxyProto != "" {
			svc.ProxyProto = port.ProxyProto
			break
		}
	}
	svc.InternalPort, svc.Processes = s.internalPort, s.processes
	svc.AutoStop, svc.AutoStart, svc.MinRunning, svc.Concurrency = s.autoStop, s.autoStart, s.minRunning, s.conc
	return svc
}

func (p *parser) port(path string, m map[string]any) (Port, bool) {
	d := p.d
	var (
		port               Port
		single, start, end int
		ppVersion          string
		nerr               = len(d.errs)
	)
	d.table(path, m, map[string]field{
		"port":       func(path string, v any) { single, _ = d.port(path, v) },
		"start_port": func(path string, v any) { start, _ = d.port(path, v) },
		"end_port":   func(path string, v any) { end, _ = d.port(path, v) },
		"handlers": func(path string, v any) {
			l, ok := d.strList(path, v)
			if !ok {
				return
			}
			for i, h := range l {
				if !knownHandlers[h] {
					d.fail(fmt.Sprintf("%s[%d]", path, i),
						"unknown handler %q; use http, tls, proxy_proto, pg_tls or edge_http", h)
				}
			}
			port.Handlers = l
		},
		"force_https": func(path string, v any) { port.ForceHTTPS, _ = d.boolean(path, v) },
		"proxy_proto_options": func(path string, v any) {
			pm, ok := d.tbl(path, v)
			if !ok {
				return
			}
			d.table(path, pm, map[string]field{
				"version": func(path string, v any) {
					s, ok := d.str(path, v)
					if !ok {
						return
					}
					if s != "v1" && s != "v2" {
						d.fail(path, `must be "v1" or "v2", got %q`, s)
						return
					}
					ppVersion = s
				},
			})
		},
		"tls_options": ignored, "http_options": ignored,
	})
	_, hasPort := m["port"]
	_, hasStart := m["start_port"]
	_, hasEnd := m["end_port"]
	switch {
	case hasPort && (hasStart || hasEnd):
		d.fail(path, "has both port and start_port/end_port; use one or the other")
	case hasPort:
		port.Start, port.End = single, single
	case hasStart && hasEnd:
		if start > 0 && end > 0 && start > end {
			d.fail(path+".start_port", "start_port %d is greater than end_port %d", start, end)
		}
		port.Start, port.End = start, end
	case hasStart:
		d.fail(path, "start_port needs end_port")
	case hasEnd:
		d.fail(path, "end_port needs start_port")
	default:
		d.fail(path, "needs port, or start_port and end_port")
	}
	if slices.Contains(port.Handlers, "proxy_proto") {
		port.ProxyProto = "v1" // Fly's default version
		if ppVersion != "" {
			port.ProxyProto = ppVersion
		}
	} else if ppVersion != "" {
		d.warn(path+".proxy_proto_options", "has no effect without the proxy_proto handler")
	}
	return port, len(d.errs) == nerr
}

func (p *parser) concurrency(path string, v any, c *Concurrency) {
	d := p.d
	m, ok := d.tbl(path, v)
	if !ok {
		return
	}
	var soft, hard int
	d.table(path, m, map[string]field{
		"type": func(path string, v any) {
			s, ok := d.str(path, v)
			if !ok {
				return
			}
			if s != "connections" && s != "requests" {
				d.fail(path, `must be "connections" or "requests", got %q`, s)
				return
			}
			c.Type = s
		},
		"soft_limit": func(path string, v any) { soft, _ = d.integer(path, v, 1, maxConcurrencyLimit) },
		"hard_limit": func(path string, v any) { hard, _ = d.integer(path, v, 1, maxConcurrencyLimit) },
	})
	switch {
	case soft > 0 && hard > 0:
		if soft > hard {
			d.fail(path+".soft_limit", "soft_limit %d is greater than hard_limit %d", soft, hard)
		}
		c.Soft, c.Hard = soft, hard
	case soft > 0:
		c.Soft, c.Hard = soft, max(soft, DefaultHardLimit)
	case hard > 0:
		c.Soft, c.Hard = min(hard, DefaultSoftLimit), hard
	}
}

// checks reads [[http_service.checks]], [[services.tcp_checks]] or
// [[services.http_checks]]. Integer durations are milliseconds, as in
// older flyctl files (interval = 10000).
func (p *parser) checks(path string, v any, typ string) []Check {
	d := p.d
	list, ok := d.tables(path, v)
	if !ok {
		return nil
	}
	out := make([]Check, 0, len(list))
	for i, m := range list {
		c := Check{Type: typ}
		dur := func(dst *time.Duration) field {
			return func(path string, v any) {
				if t, ok := d.duration(path, v, time.Millisecond, maxCheckDuration); ok {
					*dst = t
				}
			}
		}
		str := func(dst *string) field {
			return func(path string, v any) { *dst, _ = d.str(path, v) }
		}
		fields := map[string]field{
			"interval": dur(&c.Interval), "timeout": dur(&c.Timeout), "grace_period": dur(&c.GracePeriod),
			"restart_limit": ignored, "type": ignored, "port": ignored,
		}
		if typ == "http" {
			fields["method"] = str(&c.Method)
			fields["path"] = str(&c.Path)
			fields["protocol"] = str(&c.Protocol)
			fields["tls_server_name"] = ignored
			fields["tls_skip_verify"] = func(path string, v any) { c.TLSSkipVerify, _ = d.boolean(path, v) }
			fields["headers"] = func(path string, v any) {
				hm, ok := d.tbl(path, v)
				if !ok {
					return
				}
				c.Headers = make(map[string]string, len(hm))
				for k, hv := range hm {
					if s, ok := d.str(join(path, k), hv); ok {
						c.Headers[k] = s
					}
				}
			}
		}
		d.table(fmt.Sprintf("%s[%d]", path, i), m, fields)
		out = append(out, c)
	}
	return out
}
