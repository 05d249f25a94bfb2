package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/devgate/devgate/peers"
)

// maxIDAttempts bounds retries on a machine ID collision (2^56 IDs make even
// one collision unlikely).
const maxIDAttempts = 8

// CreateMachine records a new machine of m.App, assigning its ID (14 hex
// digits), its 6PN address in the app's network, and State "created" unless
// set. ErrNotFound if the app does not exist.
func (s *Store) CreateMachine(ctx context.Context, m Machine) (Machine, error) {
	a, err := s.GetApp(ctx, m.App)
	if err != nil {
		return Machine{}, fmt.Errorf("create machine: %w", err)
	}
	nw, err := s.GetNetwork(ctx, a.Org, a.Network)
	if err != nil {
		return Machine{}, fmt.Errorf("create machine for app %q: %w", m.App, err)
	}
	n, err := s.next(ctx, keyNetCounter("machine", nw))
	if err != nil {
		return Machine{}, fmt.Errorf("create machine for app %q: %w", m.App, err)
	}
	if n > 1<<32-1 {
		return Machine{}, fmt.Errorf("create machine for app %q: network %s/%s has no machine addresses left", m.App, a.Org, a.Network)
	}
	if m.Address, err = peers.Machine(nw.Prefix, s.gw, uint32(n)); err != nil {
		return Machine{}, fmt.Errorf("create machine for app %q: %w", m.App, err)
	}
	if m.State == "" {
		m.State = MachineCreated
	}
	if m.ProcessGroup == "" {
		m.ProcessGroup = "app"
	}
	m.CreatedAt = s.now()
	m.UpdatedAt = m.CreatedAt
	for range maxIDAttempts {
		m.ID = newMachineID()
		_, err = s.create(ctx, keyMachine(m.ID), &m)
		if !errors.Is(err, ErrExists) {
			break
		}
	}
	if err != nil {
		return Machine{}, fmt.Errorf("create machine for app %q: %w", m.App, err)
	}
	if err := s.undoIfAppGone(ctx, m.App, keyMachine(m.ID)); err != nil {
		return Machine{}, fmt.Errorf("create machine: %w", err)
	}
	return m, nil
}

func newMachineID() string {
	var b [7]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b[:])
}

// GetMachine returns a machine, or ErrNotFound.
func (s *Store) GetMachine(ctx context.Context, id string) (Machine, error) {
	if !validMachineID(id) {
		return Machine{}, fmt.Errorf("machine %q: %w; a machine ID is 14 hex digits", id, ErrNotFound)
	}
	var m Machine
	_, ok, err := s.get(ctx, keyMachine(id), &m)
	if err != nil {
		return Machine{}, err
	}
	if !ok {
		return Machine{}, fmt.Errorf("machine %s: %w", id, ErrNotFound)
	}
	return m, nil
}

func validMachineID(id string) bool {
	if len(id) != 14 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// ListMachines returns the machines of app ("" for all), sorted by ID.
func (s *Store) ListMachines(ctx context.Context, app string) ([]Machine, error) {
	all, err := list[Machine](ctx, s, pfxMachine)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, m := range all {
		if app == "" || m.App == app {
			out = append(out, m)
		}
	}
	sortBy(out, func(m Machine) string { return m.ID })
	return out, nil
}

// UpdateMachine applies fn to the current machine and writes it back,
// retrying if someone else wrote in between, so fn may run more than once.
// ID, App, Address and CreatedAt cannot be changed; UpdatedAt is set.
func (s *Store) UpdateMachine(ctx context.Context, id string, fn func(*Machine) error) (Machine, error) {
	if !validMachineID(id) {
		return Machine{}, fmt.Errorf("update machine %q: %w; a machine ID is 14 hex digits", id, ErrNotFound)
	}
	m, err := modify(ctx, s, keyMachine(id), func(m *Machine) error {
		keep := *m
		if err := fn(m); err != nil {
			return err
		}
		m.ID, m.App, m.Address, m.CreatedAt = keep.ID, keep.App, keep.Address, keep.CreatedAt
		m.UpdatedAt = s.now()
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return Machine{}, fmt.Errorf("update machine %s: %w", id, err)
	}
	return m, err
}

// DeleteMachine deletes a machine record. ErrNotFound if there is none.
func (s *Store) DeleteMachine(ctx context.Context, id string) error {
	if !validMachineID(id) {
		return fmt.Errorf("delete machine %q: %w; a machine ID is 14 hex digits", id, ErrNotFound)
	}
	var m Machine
	rev, ok, err := s.get(ctx, keyMachine(id), &m)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("delete machine %s: %w", id, ErrNotFound)
	}
	// Revision-checked, so of two concurrent deletes one gets ErrNotFound.
	if err := s.del(ctx, keyMachine(id), rev); errors.Is(err, errConflict) {
		return fmt.Errorf("delete machine %s: %w (it changed or was deleted meanwhile)", id, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("delete machine %s: %w", id, err)
	}
	return nil
}
