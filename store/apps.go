package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/devgate/devgate/peers"
)

// CreateApp creates an app in a.Org's network a.Network ("" for the
// default network). App names are global, like Fly's, because they are DNS
// names. ErrExists if the name is taken; ErrNotFound if the organization or
// network does not exist.
func (s *Store) CreateApp(ctx context.Context, a App) (App, error) {
	if err := ValidateName("app", a.Name); err != nil {
		return App{}, err
	}
	if a.Network == "" {
		a.Network = DefaultNetwork
	}
	if _, err := s.GetNetwork(ctx, a.Org, a.Network); err != nil {
		return App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	a.CreatedAt = s.now()
	if _, err := s.create(ctx, keyApp(a.Name), &a); errors.Is(err, ErrExists) {
		return App{}, fmt.Errorf("app %q: %w; app names are global, pick another", a.Name, ErrExists)
	} else if err != nil {
		return App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	return a, nil
}

// GetApp returns an app, or ErrNotFound.
func (s *Store) GetApp(ctx context.Context, name string) (App, error) {
	var a App
	_, ok, err := s.get(ctx, keyApp(name), &a)
	if err != nil {
		return App{}, err
	}
	if !ok {
		return App{}, fmt.Errorf("app %q: %w; list apps with `devgate apps list`", name, ErrNotFound)
	}
	return a, nil
}

// ListApps returns every app, sorted by name.
func (s *Store) ListApps(ctx context.Context) ([]App, error) {
	out, err := list[App](ctx, s, pfxApp)
	if err != nil {
		return nil, err
	}
	sortBy(out, func(a App) string { return a.Name })
	return out, nil
}

// UpdateApp applies fn to the current app and writes it back, retrying if
// someone else wrote in between, so fn may run more than once. An error from
// fn is returned as is and nothing is written. Name, Org, Network and
// CreatedAt cannot be changed.
func (s *Store) UpdateApp(ctx context.Context, name string, fn func(*App) error) (App, error) {
	a, err := modify(ctx, s, keyApp(name), func(a *App) error {
		keep := *a
		if err := fn(a); err != nil {
			return err
		}
		a.Name, a.Org, a.Network, a.CreatedAt = keep.Name, keep.Org, keep.Network, keep.CreatedAt
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return App{}, fmt.Errorf("update app %q: %w", name, err)
	}
	return a, err
}

// DeleteApp deletes an app with its Flycast addresses and machine records
// (it does not stop the machines; the caller does that first). ErrNotFound
// if there is no such app.
func (s *Store) DeleteApp(ctx context.Context, name string) error {
	key := keyApp(name)
	var a App
	rev, ok, err := s.get(ctx, key, &a)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("delete app %q: %w", name, ErrNotFound)
	}
	// The app goes first: AllocateIP and CreateMachine check again after
	// writing that their app still exists, so nothing is left behind by a
	// concurrent allocation.
	if err := s.del(ctx, key, rev); errors.Is(err, errConflict) {
		return fmt.Errorf("delete app %q: it changed meanwhile; try again", name)
	} else if err != nil {
		return fmt.Errorf("delete app %q: %w", name, err)
	}
	return s.deleteAppRecords(ctx, name)
}

func (s *Store) deleteAppRecords(ctx context.Context, app string) error {
	ips, err := s.ListIPs(ctx, app)
	if err != nil {
		return fmt.Errorf("delete addresses of app %q: %w", app, err)
	}
	for _, ip := range ips {
		if err := s.del(ctx, keyIP(ip.Address), 0); err != nil {
			return fmt.Errorf("delete address %s of app %q: %w", ip.Address, app, err)
		}
	}
	ms, err := s.ListMachines(ctx, app)
	if err != nil {
		return fmt.Errorf("delete machines of app %q: %w", app, err)
	}
	for _, m := range ms {
		if err := s.del(ctx, keyMachine(m.ID), 0); err != nil {
			return fmt.Errorf("delete machine %s of app %q: %w", m.ID, app, err)
		}
	}
	return nil
}

// AllocateIP allocates a Flycast address for app in network (org, network).
// org "" means the app's own organization and network "" its default
// network (or, with org "" too, the app's own network). The address lies in
// that network's /48, so only peers of that network reach the app through it.
func (s *Store) AllocateIP(ctx context.Context, app, org, network, region string) (IP, error) {
	a, err := s.GetApp(ctx, app)
	if err != nil {
		return IP{}, fmt.Errorf("allocate address: %w", err)
	}
	switch {
	case org == "" && network == "":
		org, network = a.Org, a.Network
	case org == "":
		org = a.Org
	case network == "":
		network = DefaultNetwork
	}
	nw, err := s.GetNetwork(ctx, org, network)
	if err != nil {
		return IP{}, fmt.Errorf("allocate address for app %q: %w", app, err)
	}
	n, err := s.next(ctx, keyNetCounter("flycast", nw))
	if err != nil {
		return IP{}, fmt.Errorf("allocate address for app %q: %w", app, err)
	}
	if n > 1<<32-1 {
		return IP{}, fmt.Errorf("allocate address for app %q: network %s/%s has no Flycast addresses left", app, org, network)
	}
	ip := IP{
		Address: peers.Flycast(nw.Prefix, uint32(n)), App: app, Type: IPPrivate,
		Org: org, Network: network, Region: region, CreatedAt: s.now(),
	}
	if _, err := s.create(ctx, keyIP(ip.Address), &ip); err != nil {
		return IP{}, fmt.Errorf("allocate address for app %q: %w", app, err)
	}
	if err := s.undoIfAppGone(ctx, app, keyIP(ip.Address)); err != nil {
		return IP{}, fmt.Errorf("allocate address: %w", err)
	}
	return ip, nil
}

// undoIfAppGone deletes key if app was deleted while key was being written.
func (s *Store) undoIfAppGone(ctx context.Context, app, key string) error {
	_, err := s.GetApp(ctx, app)
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	if derr := s.del(ctx, key, 0); derr != nil {
		return fmt.Errorf("%w (and removing %s failed: %v)", err, key, derr)
	}
	return err
}

// ListIPs returns an app's Flycast addresses ("" for all), sorted.
func (s *Store) ListIPs(ctx context.Context, app string) ([]IP, error) {
	all, err := list[IP](ctx, s, pfxIP)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, ip := range all {
		if app == "" || ip.App == app {
			out = append(out, ip)
		}
	}
	sortBy(out, func(ip IP) string { return string(ip.Address.AsSlice()) })
	return out, nil
}

// ReleaseIP releases one of app's addresses. The address is never handed
// out again. ErrNotFound if app has no such address.
func (s *Store) ReleaseIP(ctx context.Context, app string, addr netip.Addr) error {
	key := keyIP(addr)
	var ip IP
	rev, ok, err := s.get(ctx, key, &ip)
	if err != nil {
		return err
	}
	if !ok || ip.App != app {
		return fmt.Errorf("release %s: app %q has no such address: %w; see `devgate ips list -a %s`", addr, app, ErrNotFound, app)
	}
	if err := s.del(ctx, key, rev); errors.Is(err, errConflict) {
		return fmt.Errorf("release %s: it changed meanwhile; try again", addr)
	} else if err != nil {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}
