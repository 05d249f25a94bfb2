package store

import (
	"regexp"
	"testing"
)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// FuzzValidateName: names come from users (CLI, API, fly.toml) and become
// NATS keys and DNS labels; ValidateName must accept exactly the documented
// alphabet.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"hello", "a", "a-1", "", "1a", "A", "a.b", "a>", "a*", "héllo", "a\x00", "peer.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName("app", name)
		if want := nameRE.MatchString(name); (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v, regexp says %v", name, err, want)
		}
	})
}
