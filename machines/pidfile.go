package machines

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxPidFile bounds what CleanupOrphans reads of a pid file; a valid one is
// two decimal numbers.
const maxPidFile = 128

// maxEnviron bounds how much of /proc/<pid>/environ is read when looking for
// a machine's stray children (Linux allows environments of several MiB).
const maxEnviron = 1 << 20

// checkID rejects machine IDs that cannot safely name a pid file.
func checkID(id string) error {
	if id == "" || len(id) > 64 {
		return errors.New("machine ID must be 1 to 64 characters")
	}
	for _, c := range id {
		ok := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_'
		if !ok {
			return fmt.Errorf("machine ID has %q; use letters, digits, - and _", c)
		}
	}
	return nil
}

func pidPath(dir, id string) string { return filepath.Join(dir, id+".pid") }

// writePidFile records pid and its kernel start time, which together name
// one process: a pid alone may be reused by an unrelated process later.
func writePidFile(dir, id string, pid int) error {
	_, start, err := procStat(pid)
	if err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	data := fmt.Sprintf("%d %d\n", pid, start)
	tmp := pidPath(dir, id) + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.Rename(tmp, pidPath(dir, id)); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

func removePidFile(dir, id string, logf func(string, ...any)) {
	if err := os.Remove(pidPath(dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		logf("machine %s: remove pid file: %v", id, err)
	}
}

// parsePidFile parses "<pid> <starttime>\n".
func parsePidFile(b []byte) (pid int, start uint64, err error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, errors.New("pid file: want \"<pid> <start time>\"")
	}
	pid, err = strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, 0, fmt.Errorf("pid file: bad pid %q", f[0])
	}
	start, err = strconv.ParseUint(f[1], 10, 64)
	if err != nil || start == 0 {
		return 0, 0, fmt.Errorf("pid file: bad start time %q", f[1])
	}
	return pid, start, nil
}

// parseStat returns the process group (field 5) and start time in clock
// ticks since boot (field 22) from the text of /proc/<pid>/stat. The command
// name (field 2) is in parentheses and may itself hold spaces and ')'.
func parseStat(b []byte) (pgrp int, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 22-3+1 {
		return 0, 0, errors.New("proc stat: too few fields")
	}
	pgrp, err = strconv.Atoi(f[5-3])
	if err != nil {
		return 0, 0, fmt.Errorf("proc stat: bad pgrp: %w", err)
	}
	start, err = strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("proc stat: bad start time: %w", err)
	}
	return pgrp, start, nil
}

func procStat(pid int) (pgrp int, start uint64, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, err
	}
	return parseStat(b)
}

// CleanupOrphans kills what is left of machines that a previous gateway ran
// and removes their pid files. Call it once, before starting any machine.
//
// A leftover is killed only when it is provably ours: the pid file's process
// still has the recorded start time (then its whole process group is
// killed), or, with that leader gone, a process in its group carries the
// machine's FLY_MACHINE_ID in its environment. A pid reused by an unrelated
// process is never signalled. It returns the IDs of machines whose leftover
// processes were killed; every pid file is removed either way.
func (d *ProcessDriver) CleanupOrphans() ([]string, error) {
	entries, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("cleanup orphans: %w", err)
	}
	var cleaned []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".pid")
		if !ok || checkID(id) != nil {
			continue
		}
		d.mu.Lock()
		mine := d.procs[id] != nil
		d.mu.Unlock()
		if mine {
			continue // started by this driver; not an orphan
		}
		path := pidPath(d.cfg.StateDir, id)
		pid, start, err := readPidFile(path)
		if err != nil {
			d.cfg.Logf("machine %s: ignoring pid file: %v", id, err)
		} else if d.killOrphan(id, pid, start) {
			cleaned = append(cleaned, id)
		}
		removePidFile(d.cfg.StateDir, id, d.cfg.Logf)
	}
	return cleaned, nil
}

func readPidFile(path string) (int, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPidFile))
	if err != nil {
		return 0, 0, err
	}
	return parsePidFile(b)
}

func (d *ProcessDriver) killOrphan(id string, pid int, start uint64) bool {
	if pgrp, st, err := procStat(pid); err == nil && st == start {
		var kerr error
		if pgrp == pid {
			kerr = killGroup(pid, syscall.SIGKILL)
		} else {
			kerr = syscall.Kill(pid, syscall.SIGKILL)
		}
		if kerr != nil {
			d.cfg.Logf("machine %s: kill orphan pid %d: %v", id, pid, kerr)
			return false
		}
		d.cfg.Logf("machine %s: killed orphan pid %d and its group", id, pid)
		return true
	}
	// The leader is gone (Pdeathsig killed it) but its children may live
	// on in its group. Kill only those that carry this machine's ID.
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	mark := []byte("\x00FLY_MACHINE_ID=" + id + "\x00")
	killed := false
	for _, e := range procs {
		member, err := strconv.Atoi(e.Name())
		if err != nil || member <= 1 || member == os.Getpid() {
			continue
		}
		if pgrp, _, err := procStat(member); err != nil || pgrp != pid {
			continue
		}
		if !environHas(member, mark) {
			continue
		}
		if err := syscall.Kill(member, syscall.SIGKILL); err == nil {
			d.cfg.Logf("machine %s: killed orphan child pid %d", id, member)
			killed = true
		}
	}
	return killed
}

// environHas reports whether /proc/<pid>/environ holds mark, which is
// "\x00NAME=value\x00"; the environ text is NUL-framed to match the first
// variable too.
func environHas(pid int, mark []byte) bool {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEnviron))
	if err != nil {
		return false
	}
	framed := make([]byte, 0, len(b)+2)
	framed = append(append(append(framed, 0), b...), 0)
	return bytes.Contains(framed, mark)
}
