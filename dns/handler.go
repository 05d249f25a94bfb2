package dns

import (
	mdns "github.com/miekg/dns"
)

// handler serves one transport; tcp says which, because forwarding uses the
// query's transport and only UDP replies are truncated to the client's size.
type handler struct {
	s   *Server
	tcp bool
}

var _ mdns.Handler = (*handler)(nil)

// ServeDNS answers one query. It never panics on a parsed message: every
// branch builds a reply from the request's header and question only.
func (h *handler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	s := h.s
	var qtype uint16
	if len(r.Question) > 0 {
		qtype = r.Question[0].Qtype
	}
	reply := h.reply(w, r)
	if reply == nil {
		return // a response, not a query: say nothing (no reflection loops)
	}
	h.finish(r, reply)
	if err := w.WriteMsg(reply); err != nil {
		// The reply cannot be packed (it should always pack) or the client
		// went away; either way there is nothing better to send.
		s.cfg.Logf("dns: write reply to %v: %v", w.RemoteAddr(), err)
		return
	}
	s.observe(qtype, reply.Rcode)
}

// reply computes the answer to r before EDNS and truncation.
func (h *handler) reply(w mdns.ResponseWriter, r *mdns.Msg) *mdns.Msg {
	s := h.s
	switch {
	case r.Response:
		return nil
	case r.Opcode != mdns.OpcodeQuery:
		return errorReply(r, mdns.RcodeNotImplemented)
	case len(r.Question) != 1:
		return errorReply(r, mdns.RcodeFormatError)
	}
	if opt := r.IsEdns0(); opt != nil && opt.Version() != 0 {
		// RFC 6891 6.1.3: we speak EDNS version 0 only.
		return errorReply(r, mdns.RcodeBadVers)
	}
	k, ok := s.cfg.NetworkFor(w.RemoteAddr())
	if !ok {
		return errorReply(r, mdns.RcodeRefused)
	}
	if a := s.Answer(k, r); a != nil {
		return a
	}
	reply, err := s.forward(r, h.tcp)
	if err != nil {
		return errorReply(r, mdns.RcodeServerFailure)
	}
	return reply
}

// errorReply is a reply with rcode and the question echoed (when there is
// exactly one; FORMERR for several questions echoes none).
func errorReply(r *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.Id = r.Id
	m.Response = true
	m.Opcode = r.Opcode
	m.RecursionDesired = r.RecursionDesired
	m.CheckingDisabled = r.CheckingDisabled
	m.RecursionAvailable = true
	m.Rcode = rcode
	if len(r.Question) == 1 {
		m.Question = []mdns.Question{r.Question[0]}
	}
	return m
}

// finish applies EDNS and size rules to a reply: an OPT record only when the
// query had one (RFC 6891 7), advertising MaxUDPSize; UDP replies truncated
// to the client's size clamped to [512, MaxUDPSize], TCP ones to 64 KiB.
func (h *handler) finish(r, reply *mdns.Msg) {
	qopt := r.IsEdns0()
	ropt := popOPT(reply)
	size := mdns.MinMsgSize
	if qopt != nil {
		if ropt == nil {
			ropt = new(mdns.OPT)
			ropt.Hdr.Name = "."
			ropt.Hdr.Rrtype = mdns.TypeOPT
		}
		ropt.SetUDPSize(MaxUDPSize)
		ropt.SetVersion(0)
		if qopt.Do() {
			ropt.SetDo()
		}
		reply.Extra = append(reply.Extra, ropt)
		size = clampUDPSize(qopt.UDPSize())
	} else if reply.Rcode > 0xF {
		// An extended rcode cannot be sent without OPT.
		reply.Rcode = mdns.RcodeServerFailure
	}
	if h.tcp {
		size = mdns.MaxMsgSize
	}
	reply.Truncate(size)
}

// clampUDPSize is the UDP reply size for a client that advertised n.
func clampUDPSize(n uint16) int {
	switch {
	case n < mdns.MinMsgSize:
		return mdns.MinMsgSize
	case n > MaxUDPSize:
		return MaxUDPSize
	}
	return int(n)
}

// popOPT removes and returns the OPT record of m, if any (an upstream's).
func popOPT(m *mdns.Msg) *mdns.OPT {
	var opt *mdns.OPT
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if o, ok := rr.(*mdns.OPT); ok {
			opt = o
			continue
		}
		extra = append(extra, rr)
	}
	m.Extra = extra
	return opt
}
