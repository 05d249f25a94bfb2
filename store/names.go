package store

import "fmt"

// MaxNameLen is the longest allowed name; it keeps names usable as DNS labels
// (<app>.flycast, <peer>._peer.internal).
const MaxNameLen = 63

// ValidateName checks that name is a valid name for a record of the given
// kind ("app", "org", "network", "peer"): 1 to 63 lowercase letters, digits
// and hyphens, starting with a letter. Names end up in DNS labels and in NATS
// keys, and this alphabet is safe in both.
func ValidateName(kind, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("%w %s name %q: %s; use 1 to %d lowercase letters, digits and hyphens, starting with a letter", ErrInvalid, kind, name, err, MaxNameLen)
	}
	return nil
}

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("it is empty")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("it is %d characters long", len(name))
	}
	if c := name[0]; c < 'a' || c > 'z' {
		return fmt.Errorf("it does not start with a lowercase letter")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' {
			continue
		}
		return fmt.Errorf("character %q at position %d is not allowed", c, i+1)
	}
	return nil
}
