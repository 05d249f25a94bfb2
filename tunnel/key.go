package tunnel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LoadOrCreateKey reads the gateway's private key from path, or generates one
// and writes it there (mode 0600) when the file does not exist. A file that
// exists but does not hold a key is an error: replacing it would silently
// invalidate every peer's configuration.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, perr := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if perr != nil {
			return wgtypes.Key{}, fmt.Errorf("private key file %s is corrupt (%v); restore it from a backup, or delete it to generate a new key (every peer will then need a new config)", path, perr)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("read private key: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate private key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, fmt.Errorf("create key directory: %w", err)
	}
	// Write to a temporary file and rename, so a crash never leaves a
	// half-written key behind.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".wgkey-*")
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
	}
	if _, err := tmp.WriteString(k.String() + "\n"); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
	}
	return k, nil
}
