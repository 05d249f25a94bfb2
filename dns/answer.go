package dns

import (
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/devgate/devgate/peers"
	"github.com/devgate/devgate/store"
)

// TTLs of private answers. Short because state changes live: .internal
// follows machines starting and stopping; .flycast addresses change only when
// allocated or released, so they may be cached longer.
const (
	InternalTTL = 5
	FlycastTTL  = 60
)

// Zones the server is authoritative for. Names under them are never forwarded.
const (
	zoneInternal = "internal."
	zoneFlycast  = "flycast."
)

// Bounds on what a private name can make us compute or send.
const (
	// maxLabels is the most labels below a zone that any private name has
	// (top<N>.nearest.of.<app>.internal); longer names are NXDOMAIN without
	// further work.
	maxLabels = 4
	// maxTopN caps N in top<N>.nearest.of.<app>.internal, so the number in
	// the name cannot ask for more than a sane count (and parses cheaply).
	maxTopN = 1000
	// maxTXTBytes caps the text of one TXT listing (a TXT record's data
	// cannot exceed 64 KiB); a longer listing is cut at an item boundary.
	maxTXTBytes = 32 << 10
	// txtChunk is the longest character-string in a TXT record (RFC 1035).
	txtChunk = 255
)

// Answer returns the reply to q for an asker in network k when q's name is
// private (under .internal or .flycast), and nil when it is not (the caller
// forwards it). A private name that does not exist in k is NXDOMAIN; one that
// exists without data of the asked type is NOERROR with no answers. Answer
// reads only the current snapshot; it never panics and never does I/O.
//
// The question is matched case-insensitively against the store's names,
// which are lower case (app, peer and region names as Fly requires them;
// machine IDs in lower-case hex). Names containing escapes (\.) never match a private name and are NXDOMAIN
// if their last label is a private zone.
func (s *Server) Answer(k store.NetworkKey, q *mdns.Msg) *mdns.Msg {
	if q == nil || len(q.Question) != 1 {
		return nil
	}
	question := q.Question[0]
	name := strings.ToLower(question.Name) // no allocation when already lower case
	zone, rest, ok := privateZone(name)
	if !ok {
		return nil
	}
	m := new(mdns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	m.RecursionAvailable = true
	if question.Qclass != mdns.ClassINET && question.Qclass != mdns.ClassANY {
		// We hold no data in other classes and must not forward the name.
		m.Rcode = mdns.RcodeRefused
		return m
	}
	a := answerer{
		snap:   s.snapshot(),
		region: s.cfg.Region,
		k:      k,
		qname:  question.Name,
		qtype:  question.Qtype,
		ttl:    InternalTTL,
	}
	var exists bool
	if zone == zoneFlycast {
		a.ttl = FlycastTTL
		exists = a.flycast(rest)
	} else {
		exists = a.internal(rest)
	}
	m.Answer = a.rrs
	switch {
	case !exists:
		m.Rcode = mdns.RcodeNameError
		m.Answer = nil
		m.Ns = []mdns.RR{soa(zone, a.ttl)}
	case len(m.Answer) == 0:
		if rest == "" && a.wants(mdns.TypeSOA) {
			m.Answer = []mdns.RR{soa(zone, a.ttl)}
		} else {
			// NODATA: the SOA lets resolvers cache the negative answer.
			m.Ns = []mdns.RR{soa(zone, a.ttl)}
		}
	}
	return m
}

// privateZone reports whether name (lower case, fully qualified) lies in a
// private zone and returns the zone and the labels below it ("" at the apex).
func privateZone(name string) (zone, rest string, ok bool) {
	for _, z := range [...]string{"." + zoneInternal, "." + zoneFlycast} {
		switch {
		case name == z[1:]:
			return z[1:], "", true
		case strings.HasSuffix(name, z):
			rest = name[:len(name)-len(z)]
			if escapedEnd(rest) {
				// "foo\.internal." is one label under the root, not ours.
				continue
			}
			return z[1:], rest, true
		}
	}
	return "", "", false
}

// escapedEnd reports whether s ends in an odd run of backslashes, so that
// the dot after it is escaped.
func escapedEnd(s string) bool {
	n := 0
	for n < len(s) && s[len(s)-1-n] == '\\' {
		n++
	}
	return n%2 == 1
}

// soa is the zone's SOA record; its minimum (the negative-caching TTL)
// equals the zone's TTL.
func soa(zone string, ttl uint32) mdns.RR {
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: zone, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
		Ns:      zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  ttl,
	}
}

// answerer collects the records of one private name.
type answerer struct {
	snap   *store.Snapshot
	region string
	k      store.NetworkKey
	qname  string // as asked, so the answer echoes the client's case
	qtype  uint16
	ttl    uint32
	rrs    []mdns.RR
}

func (a *answerer) wants(t uint16) bool { return a.qtype == t || a.qtype == mdns.TypeANY }

// addr adds an A or AAAA record for ip when that type is asked for.
func (a *answerer) addr(ip netip.Addr) {
	hdr := mdns.RR_Header{Name: a.qname, Class: mdns.ClassINET, Ttl: a.ttl}
	switch {
	case ip.Is4() || ip.Is4In6():
		if a.wants(mdns.TypeA) {
			hdr.Rrtype = mdns.TypeA
			a.rrs = append(a.rrs, &mdns.A{Hdr: hdr, A: ip.Unmap().AsSlice()})
		}
	case ip.Is6():
		if a.wants(mdns.TypeAAAA) {
			hdr.Rrtype = mdns.TypeAAAA
			a.rrs = append(a.rrs, &mdns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
		}
	}
}

// wantsAddr reports whether A or AAAA records are asked for.
func (a *answerer) wantsAddr() bool { return a.wants(mdns.TypeA) || a.wants(mdns.TypeAAAA) }

// txt adds a TXT record holding items joined by sep, when TXT is asked for.
// The text is cut at an item boundary past maxTXTBytes and split into
// 255-byte character-strings.
func (a *answerer) txt(items []string, sep string) {
	if !a.wants(mdns.TypeTXT) {
		return
	}
	var b strings.Builder
	for i, it := range items {
		if b.Len()+len(sep)+len(it) > maxTXTBytes {
			break
		}
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(it)
	}
	text := b.String()
	chunks := make([]string, 0, len(text)/txtChunk+1)
	for len(text) > txtChunk {
		chunks = append(chunks, text[:txtChunk])
		text = text[txtChunk:]
	}
	chunks = append(chunks, text)
	a.rrs = append(a.rrs, &mdns.TXT{
		Hdr: mdns.RR_Header{Name: a.qname, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: a.ttl},
		Txt: chunks,
	})
}

// splitLabels splits rest ("a.b.c") into at most maxLabels labels, left to
// right. ok is false for more labels or an empty label.
func splitLabels(rest string) (labels [maxLabels]string, n int, ok bool) {
	if rest == "" {
		return labels, 0, true
	}
	for {
		i := strings.IndexByte(rest, '.')
		if n == maxLabels {
			return labels, n, false
		}
		if i < 0 {
			labels[n] = rest
			n++
			return labels, n, rest != ""
		}
		if i == 0 {
			return labels, n, false
		}
		labels[n] = rest[:i]
		n++
		rest = rest[i+1:]
	}
}

// flycast answers <app>.flycast: the app's Flycast addresses that lie in k,
// whatever the app's organization, and whether or not a machine runs. The
// name exists when the app has an address in k or k is its own network.
func (a *answerer) flycast(rest string) bool {
	labels, n, ok := splitLabels(rest)
	if !ok {
		return false
	}
	if n == 0 {
		return true // the zone apex
	}
	if n != 1 {
		return false
	}
	app := labels[0]
	exists := false
	for _, ip := range a.snap.IPsIn(a.k) {
		if ip.App == app {
			exists = true
			a.addr(ip.Address)
		}
	}
	if !exists {
		_, exists = a.ownApp(app)
	}
	return exists
}

// ownApp returns the app named name if its own network is k. Apps of other
// networks do not exist under .internal for k.
func (a *answerer) ownApp(name string) (store.App, bool) {
	app, ok := a.snap.Apps[name]
	if !ok || app.Org != a.k.Org || app.Network != a.k.Network {
		return store.App{}, false
	}
	return app, true
}

// live reports whether m is listed in .internal: started machines only, as
// Fly lists them.
func live(m store.Machine) bool { return m.State == store.MachineStarted }

// existing reports whether m still exists (for names that exist regardless
// of state: <region>.<app>, <id>.vm.<app>).
func existing(m store.Machine) bool { return m.State != store.MachineDestroyed }

// internal answers names under .internal; see the package doc and DESIGN.md.
func (a *answerer) internal(rest string) bool {
	l, n, ok := splitLabels(rest)
	if !ok {
		return false
	}
	switch n {
	case 0:
		return true // the zone apex
	case 1:
		switch l[0] {
		case "_apps":
			if a.wants(mdns.TypeTXT) {
				apps := a.snap.AppsIn(a.k)
				names := make([]string, len(apps))
				for i, app := range apps {
					names[i] = app.Name
				}
				a.txt(names, ",")
			}
			return true
		case "_instances":
			if a.wants(mdns.TypeTXT) {
				a.txt(a.instances(), ";")
			}
			return true
		case "_peer":
			if a.wants(mdns.TypeTXT) {
				ps := a.snap.PeersIn(a.k)
				names := make([]string, len(ps))
				for i, p := range ps {
					names[i] = p.Name
				}
				a.txt(names, ",")
			}
			return true
		case "_api":
			nw, ok := a.snap.Networks[a.k]
			if !ok {
				return false
			}
			a.addr(peers.Resolver(nw.Prefix))
			return true
		}
		return a.appMachines(l[0], func(store.Machine) bool { return true })
	case 2:
		if l[1] == "_peer" {
			for _, p := range a.snap.PeersIn(a.k) {
				if p.Name == l[0] {
					a.addr(p.Address)
					return true
				}
			}
			return false
		}
		return a.appSub(l[0], l[1])
	case 3:
		if _, ok := a.ownApp(l[2]); !ok {
			return false
		}
		switch {
		case l[1] == "vm":
			for _, m := range a.snap.MachinesOf(l[2]) {
				if m.ID == l[0] && existing(m) {
					if live(m) {
						a.addr(m.Address)
					}
					return true
				}
			}
			return false
		case l[0] == "nearest" && l[1] == "of":
			return true // empty non-terminal above top<N>
		}
		return false
	case 4:
		if l[1] != "nearest" || l[2] != "of" || !strings.HasPrefix(l[0], "top") {
			return false
		}
		if _, ok := a.ownApp(l[3]); !ok {
			return false
		}
		digits := l[0][len("top"):]
		if len(digits) == 0 || len(digits) > 4 || digits[0] == '0' {
			return false
		}
		topN, err := strconv.Atoi(digits)
		if err != nil || topN < 1 || topN > maxTopN {
			return false
		}
		a.nearest(l[3], topN)
		return true
	}
	return false
}

// appMachines adds the addresses of the started machines of app that pass
// keep. It reports whether app is an app of k.
func (a *answerer) appMachines(app string, keep func(store.Machine) bool) bool {
	if _, ok := a.ownApp(app); !ok {
		return false
	}
	if !a.wantsAddr() {
		return true
	}
	for _, m := range a.snap.MachinesOf(app) {
		if live(m) && keep(m) {
			a.addr(m.Address)
		}
	}
	return true
}

// appSub answers <sub>.<app>.internal.
func (a *answerer) appSub(sub, app string) bool {
	if _, ok := a.ownApp(app); !ok {
		return false
	}
	ms := a.snap.MachinesOf(app)
	switch sub {
	case "global":
		return a.appMachines(app, func(store.Machine) bool { return true })
	case "vm", "of":
		return true // empty non-terminals of <id>.vm and nearest.of
	case "vms":
		if a.wants(mdns.TypeTXT) {
			var items []string
			for _, m := range ms {
				if live(m) {
					items = append(items, m.ID+" "+m.Region)
				}
			}
			a.txt(items, ",")
		}
		return true
	case "regions":
		if a.wants(mdns.TypeTXT) {
			var regions []string
			for _, m := range ms {
				if live(m) && !contains(regions, m.Region) {
					regions = append(regions, m.Region)
				}
			}
			a.txt(regions, ",")
		}
		return true
	}
	// <region>.<app>: exists while the app has a machine there, started or not.
	for _, m := range ms {
		if existing(m) && m.Region == sub {
			return a.appMachines(app, func(m store.Machine) bool { return m.Region == sub })
		}
	}
	return false
}

// nearest adds up to n started machines of app, the gateway's region first,
// then the others by ID (the snapshot's order).
func (a *answerer) nearest(app string, n int) {
	if !a.wantsAddr() {
		return
	}
	ms := a.snap.MachinesOf(app)
	for pass := 0; pass < 2 && n > 0; pass++ {
		for _, m := range ms {
			if n == 0 {
				break
			}
			if live(m) && (m.Region == a.region) == (pass == 0) {
				a.addr(m.Address)
				n--
			}
		}
	}
}

// instances lists started machines of k's apps in Fly's _instances format.
func (a *answerer) instances() []string {
	var out []string
	for _, app := range a.snap.AppsIn(a.k) {
		for _, m := range a.snap.MachinesOf(app.Name) {
			if live(m) {
				out = append(out, "instance="+m.ID+",app="+app.Name+",ip="+m.Address.String()+",region="+m.Region)
			}
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
