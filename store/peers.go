package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/devgate/devgate/peers"
)

// claimStaleAfter is how old a public-key claim must be before it may be
// taken over when its peer record does not exist. A claim is written just
// before the peer record, so a younger claim may belong to a CreatePeer still
// in flight; an older one was left by a writer that died in between.
const claimStaleAfter = time.Minute

// keyClaim reserves a WireGuard public key for one peer, so that no two
// peers (in any organization) share a key: the gateway identifies a peer by
// its key.
type keyClaim struct {
	Org       string    `json:"org"`
	Peer      string    `json:"peer"`
	CreatedAt time.Time `json:"created_at"`
}

// CreatePeer adds a WireGuard peer to p.Org's network p.Network and assigns
// its address. ErrExists if the organization has a peer of that name or any
// peer has that public key; ErrNotFound if the organization or network does
// not exist.
func (s *Store) CreatePeer(ctx context.Context, p Peer) (Peer, error) {
	if err := ValidateName("peer", p.Name); err != nil {
		return Peer{}, err
	}
	if p.Network == "" {
		p.Network = DefaultNetwork
	}
	if err := validPublicKey(p.PublicKey); err != nil {
		return Peer{}, fmt.Errorf("create peer %q: %w", p.Name, err)
	}
	nw, err := s.GetNetwork(ctx, p.Org, p.Network)
	if err != nil {
		return Peer{}, fmt.Errorf("create peer %q: %w", p.Name, err)
	}
	// Cheap early answer for the common mistake; the Create below decides.
	if _, err := s.GetPeer(ctx, p.Org, p.Name); err == nil {
		return Peer{}, fmt.Errorf("peer %q in organization %q: %w; pick another name or remove it first", p.Name, p.Org, ErrExists)
	}
	p.CreatedAt = s.now()
	claim := keyClaim{Org: p.Org, Peer: p.Name, CreatedAt: p.CreatedAt}
	claimRev, err := s.claimKey(ctx, p.PublicKey, claim)
	if err != nil {
		return Peer{}, fmt.Errorf("create peer %q: %w", p.Name, err)
	}
	n, err := s.next(ctx, keyNetCounter("peer", nw))
	if err == nil {
		p.Address, err = peers.Peer(nw.Prefix, s.gw, uint32(min(n, peers.MaxPeerNumber+1)))
	}
	if err == nil {
		_, err = s.create(ctx, keyPeer(p.Org, p.Name), &p)
		if errors.Is(err, ErrExists) {
			err = fmt.Errorf("peer %q in organization %q: %w; pick another name or remove it first", p.Name, p.Org, ErrExists)
		}
	}
	if err != nil {
		if rerr := s.del(ctx, keyPeerKey(p.PublicKey), claimRev); rerr != nil {
			s.logf("store: create peer %q: releasing public key claim: %v", p.Name, rerr)
		}
		return Peer{}, fmt.Errorf("create peer %q: %w", p.Name, err)
	}
	return p, nil
}

// claimKey reserves pub for the peer in c, taking over a stale claim.
func (s *Store) claimKey(ctx context.Context, pub string, c keyClaim) (uint64, error) {
	key := keyPeerKey(pub)
	for range maxCASAttempts {
		rev, err := s.create(ctx, key, &c)
		if !errors.Is(err, ErrExists) {
			return rev, err
		}
		var old keyClaim
		rev, ok, err := s.get(ctx, key, &old)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue // released meanwhile
		}
		owner, err := s.GetPeer(ctx, old.Org, old.Peer)
		switch {
		case err == nil && owner.PublicKey == pub:
			return 0, fmt.Errorf("public key is already used by peer %q in organization %q: %w; generate a new key pair", old.Peer, old.Org, ErrExists)
		case err != nil && !errors.Is(err, ErrNotFound):
			return 0, err
		case err != nil && s.now().Sub(old.CreatedAt) < claimStaleAfter:
			return 0, fmt.Errorf("public key is being registered for peer %q in organization %q: %w", old.Peer, old.Org, ErrExists)
		}
		// Stale: its peer is gone or has another key. Take it over only if
		// nobody else did first.
		rev, err = s.update(ctx, key, &c, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		return rev, err
	}
	return 0, fmt.Errorf("claim public key: gave up after %d conflicting writes", maxCASAttempts)
}

func validPublicKey(k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("%w public key %q: not a base64 WireGuard key (32 bytes); copy it from `wg pubkey`", ErrInvalid, k)
	}
	return nil
}

// GetPeer returns a peer, or ErrNotFound.
func (s *Store) GetPeer(ctx context.Context, org, name string) (Peer, error) {
	var p Peer
	_, ok, err := s.get(ctx, keyPeer(org, name), &p)
	if err != nil {
		return Peer{}, err
	}
	if !ok {
		return Peer{}, fmt.Errorf("peer %q in organization %q: %w", name, org, ErrNotFound)
	}
	return p, nil
}

// ListPeers returns the peers of an organization ("" for all), sorted by
// organization and name.
func (s *Store) ListPeers(ctx context.Context, org string) ([]Peer, error) {
	prefix := pfxPeer
	if org != "" {
		prefix += org + "."
	}
	out, err := list[Peer](ctx, s, prefix)
	if err != nil {
		return nil, err
	}
	sortBy(out, func(p Peer) string { return p.Org + "\x00" + p.Name })
	return out, nil
}

// DeletePeer removes a peer and frees its public key. Its address is not
// reused. ErrNotFound if there is no such peer.
func (s *Store) DeletePeer(ctx context.Context, org, name string) error {
	key := keyPeer(org, name)
	var p Peer
	rev, ok, err := s.get(ctx, key, &p)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("delete peer %q in organization %q: %w", name, org, ErrNotFound)
	}
	if err := s.del(ctx, key, rev); errors.Is(err, errConflict) {
		return fmt.Errorf("delete peer %q: it changed meanwhile; try again", name)
	} else if err != nil {
		return fmt.Errorf("delete peer %q: %w", name, err)
	}
	var c keyClaim
	crev, ok, err := s.get(ctx, keyPeerKey(p.PublicKey), &c)
	if err != nil || !ok || c.Org != org || c.Peer != name {
		return nil // a leftover claim is taken over once stale
	}
	if err := s.del(ctx, keyPeerKey(p.PublicKey), crev); err != nil && !errors.Is(err, errConflict) {
		s.logf("store: delete peer %q: releasing public key claim: %v", name, err)
	}
	return nil
}
