package store

import (
	"github.com/devgate/devgate/peers"
	"net/netip"
	"sort"
)

// NetworkKey names a network: organization and network name.
type NetworkKey struct {
	Org, Network string
}

// Snapshot is an immutable, indexed view of all state at one moment. The data
// plane reads snapshots and never the store itself, so a lookup on the packet
// path costs a map access and no I/O. A new snapshot is built on every change;
// readers hold on to the one they got. Do not modify a Snapshot or anything it
// returns.
type Snapshot struct {
	Orgs     map[string]Org
	Networks map[NetworkKey]Network
	Peers    []Peer
	Apps     map[string]App
	IPs      []IP
	Machines []Machine

	byPrefix   map[netip.Prefix]NetworkKey
	ipByAddr   map[netip.Addr]IP
	machByAddr map[netip.Addr]Machine
	machByApp  map[string][]Machine
	peersByNet map[NetworkKey][]Peer
	ipsByNet   map[NetworkKey][]IP
	appsByNet  map[NetworkKey][]App
}

// NewSnapshot builds the indexes over the given records. Slices are sorted so
// that every listing derived from a snapshot is stable.
func NewSnapshot(orgs []Org, networks []Network, peers []Peer, apps []App, ips []IP, machines []Machine) *Snapshot {
	s := &Snapshot{
		Orgs:       make(map[string]Org, len(orgs)),
		Networks:   make(map[NetworkKey]Network, len(networks)),
		Apps:       make(map[string]App, len(apps)),
		byPrefix:   make(map[netip.Prefix]NetworkKey, len(networks)),
		ipByAddr:   make(map[netip.Addr]IP, len(ips)),
		machByAddr: make(map[netip.Addr]Machine, len(machines)),
		machByApp:  make(map[string][]Machine),
		peersByNet: make(map[NetworkKey][]Peer),
		ipsByNet:   make(map[NetworkKey][]IP),
		appsByNet:  make(map[NetworkKey][]App),
	}
	for _, o := range orgs {
		s.Orgs[o.Name] = o
	}
	for _, n := range networks {
		k := NetworkKey{n.Org, n.Name}
		s.Networks[k] = n
		s.byPrefix[n.Prefix.Masked()] = k
	}
	s.Peers = append([]Peer(nil), peers...)
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Name < s.Peers[j].Name })
	for _, p := range s.Peers {
		k := NetworkKey{p.Org, p.Network}
		s.peersByNet[k] = append(s.peersByNet[k], p)
	}
	appList := append([]App(nil), apps...)
	sort.Slice(appList, func(i, j int) bool { return appList[i].Name < appList[j].Name })
	for _, a := range appList {
		s.Apps[a.Name] = a
		k := NetworkKey{a.Org, a.Network}
		s.appsByNet[k] = append(s.appsByNet[k], a)
	}
	s.IPs = append([]IP(nil), ips...)
	sort.Slice(s.IPs, func(i, j int) bool { return s.IPs[i].Address.Less(s.IPs[j].Address) })
	for _, ip := range s.IPs {
		s.ipByAddr[ip.Address] = ip
		k := NetworkKey{ip.Org, ip.Network}
		s.ipsByNet[k] = append(s.ipsByNet[k], ip)
	}
	s.Machines = append([]Machine(nil), machines...)
	sort.Slice(s.Machines, func(i, j int) bool { return s.Machines[i].ID < s.Machines[j].ID })
	for _, m := range s.Machines {
		if m.Address.IsValid() {
			s.machByAddr[m.Address] = m
		}
		s.machByApp[m.App] = append(s.machByApp[m.App], m)
	}
	return s
}

// Empty is a snapshot with nothing in it.
func Empty() *Snapshot { return NewSnapshot(nil, nil, nil, nil, nil, nil) }

// NetworkOf returns the network whose /48 holds addr.
func (s *Snapshot) NetworkOf(addr netip.Addr) (Network, bool) {
	p, err := addr.Prefix(48)
	if err != nil {
		return Network{}, false
	}
	k, ok := s.byPrefix[p]
	if !ok {
		return Network{}, false
	}
	return s.Networks[k], true
}

// PeersIn returns the peers of a network, sorted by name.
func (s *Snapshot) PeersIn(k NetworkKey) []Peer { return s.peersByNet[k] }

// AppsIn returns the apps whose own network is k, sorted by name.
func (s *Snapshot) AppsIn(k NetworkKey) []App { return s.appsByNet[k] }

// IPsIn returns the Flycast addresses that serve network k (they lie in its
// /48), whichever app and organization they belong to.
func (s *Snapshot) IPsIn(k NetworkKey) []IP { return s.ipsByNet[k] }

// IP returns the Flycast address record for addr.
func (s *Snapshot) IP(addr netip.Addr) (IP, bool) {
	ip, ok := s.ipByAddr[addr]
	return ip, ok
}

// IPsOf returns an app's Flycast addresses, sorted.
func (s *Snapshot) IPsOf(app string) []IP {
	var out []IP
	for _, ip := range s.IPs {
		if ip.App == app {
			out = append(out, ip)
		}
	}
	return out
}

// MachineAt returns the machine whose 6PN address is addr.
func (s *Snapshot) MachineAt(addr netip.Addr) (Machine, bool) {
	m, ok := s.machByAddr[addr]
	return m, ok
}

// MachinesOf returns an app's machines, sorted by ID.
func (s *Snapshot) MachinesOf(app string) []Machine { return s.machByApp[app] }

// Exists reports whether addr is a Flycast or machine address, or a
// network's resolver address (<prefix>::3).
func (s *Snapshot) Exists(addr netip.Addr) bool {
	if _, ok := s.ipByAddr[addr]; ok {
		return true
	}
	if _, ok := s.machByAddr[addr]; ok {
		return true
	}
	n, ok := s.NetworkOf(addr)
	return ok && addr == peers.Resolver(n.Prefix)
}
