package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// NATS's file store repairs what it cannot read when it starts: a message
// block full of garbage is dropped without an error, and the server comes up
// with less state than it had. To never lose state silently, StartEmbedded
// copies the JetStream files aside before the server touches them
// (dir/nats-prestart). If the started server then shows signs of damage, the
// copy is renamed to dir/nats-damaged-<time>, which nothing ever overwrites,
// and the error names it. The copy costs one read and write of the state on
// each start; devgate's state is small (one record per object, history 1).

const (
	prestartSubdir = "nats-prestart"
	damagedPrefix  = "nats-damaged-"
)

// copyAside copies natsDir to dir/nats-prestart, replacing the previous copy
// only once the new one is complete. It does nothing on a fresh directory.
func copyAside(dir, natsDir string) error {
	if _, err := os.Stat(filepath.Join(natsDir, "jetstream")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dst := filepath.Join(dir, prestartSubdir)
	tmp := dst + ".tmp"
	// tmp is only ever our own half-made copy from an interrupted start.
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove incomplete copy %s: %w", tmp, err)
	}
	if err := copyTree(natsDir, tmp); err != nil {
		return fmt.Errorf("copy state %s aside to %s: %w; check free disk space", natsDir, tmp, err)
	}
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("replace previous copy %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("copy state aside: %w", err)
	}
	return nil
}

// keepDamaged renames the pre-start copy to a name nothing overwrites and
// returns it ("" if there was no copy).
func keepDamaged(dir string) string {
	src := filepath.Join(dir, prestartSubdir)
	if _, err := os.Stat(src); err != nil {
		return ""
	}
	dst := filepath.Join(dir, damagedPrefix+time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(src, dst); err != nil {
		return src
	}
	return dst
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(p, target)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
