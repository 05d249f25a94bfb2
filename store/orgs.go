package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/devgate/devgate/peers"
)

// CreateOrg creates an organization and its "default" network. ErrExists if
// the organization exists.
func (s *Store) CreateOrg(ctx context.Context, name string) (Org, error) {
	if err := ValidateName("organization", name); err != nil {
		return Org{}, err
	}
	o := Org{Name: name, CreatedAt: s.now()}
	if _, err := s.create(ctx, keyOrg(name), &o); errors.Is(err, ErrExists) {
		return Org{}, fmt.Errorf("organization %q: %w", name, ErrExists)
	} else if err != nil {
		return Org{}, fmt.Errorf("create organization %q: %w", name, err)
	}
	if err := s.ensureDefaultNetwork(ctx, name); err != nil {
		return Org{}, err
	}
	return o, nil
}

// EnsureOrg returns the organization, creating it if it does not exist. It
// also makes sure the organization has its default network, which completes
// an earlier CreateOrg that was interrupted between its two writes.
func (s *Store) EnsureOrg(ctx context.Context, name string) (Org, error) {
	o, err := s.CreateOrg(ctx, name)
	if !errors.Is(err, ErrExists) {
		return o, err
	}
	if err := s.ensureDefaultNetwork(ctx, name); err != nil {
		return Org{}, err
	}
	return s.GetOrg(ctx, name)
}

func (s *Store) ensureDefaultNetwork(ctx context.Context, org string) error {
	if _, err := s.GetNetwork(ctx, org, DefaultNetwork); err == nil {
		return nil // checked first only to avoid burning a network number
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	_, err := s.CreateNetwork(ctx, org, DefaultNetwork)
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// GetOrg returns an organization, or ErrNotFound.
func (s *Store) GetOrg(ctx context.Context, name string) (Org, error) {
	var o Org
	_, ok, err := s.get(ctx, keyOrg(name), &o)
	if err != nil {
		return Org{}, err
	}
	if !ok {
		return Org{}, fmt.Errorf("organization %q: %w; check the --org flag", name, ErrNotFound)
	}
	return o, nil
}

// ListOrgs returns every organization, sorted by name.
func (s *Store) ListOrgs(ctx context.Context) ([]Org, error) {
	out, err := list[Org](ctx, s, pfxOrg)
	if err != nil {
		return nil, err
	}
	sortBy(out, func(o Org) string { return o.Name })
	return out, nil
}

// CreateNetwork creates a network in an organization and assigns it the
// next /48. ErrNotFound if the organization does not exist, ErrExists if the
// network does.
func (s *Store) CreateNetwork(ctx context.Context, org, name string) (Network, error) {
	if err := ValidateName("network", name); err != nil {
		return Network{}, err
	}
	if _, err := s.GetOrg(ctx, org); err != nil {
		return Network{}, fmt.Errorf("create network %q: %w", name, err)
	}
	n, err := s.next(ctx, keyCounter("network"))
	if err != nil {
		return Network{}, fmt.Errorf("create network %q: %w", name, err)
	}
	if n > peers.MaxNetworkNumber {
		return Network{}, fmt.Errorf("create network %q: all %d network numbers are used", name, uint64(peers.MaxNetworkNumber))
	}
	nw := Network{Org: org, Name: name, Number: uint32(n), Prefix: peers.NetworkPrefix(uint32(n)), CreatedAt: s.now()}
	if _, err := s.create(ctx, keyNet(org, name), &nw); errors.Is(err, ErrExists) {
		return Network{}, fmt.Errorf("network %q in organization %q: %w", name, org, ErrExists)
	} else if err != nil {
		return Network{}, fmt.Errorf("create network %q: %w", name, err)
	}
	return nw, nil
}

// GetNetwork returns a network, or ErrNotFound.
func (s *Store) GetNetwork(ctx context.Context, org, name string) (Network, error) {
	var n Network
	_, ok, err := s.get(ctx, keyNet(org, name), &n)
	if err != nil {
		return Network{}, err
	}
	if !ok {
		return Network{}, fmt.Errorf("network %q in organization %q: %w", name, org, ErrNotFound)
	}
	return n, nil
}

// ListNetworks returns an organization's networks, sorted by name.
// ErrNotFound if the organization does not exist.
func (s *Store) ListNetworks(ctx context.Context, org string) ([]Network, error) {
	if _, err := s.GetOrg(ctx, org); err != nil {
		return nil, err
	}
	out, err := list[Network](ctx, s, pfxNet+org+".")
	if err != nil {
		return nil, err
	}
	sortBy(out, func(n Network) string { return n.Name })
	return out, nil
}
