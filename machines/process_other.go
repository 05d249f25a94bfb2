//go:build unix && !linux

package machines

import (
	"errors"
	"fmt"
	"syscall"
)

// sysProcAttr puts the machine in its own process group. Without Linux's
// Pdeathsig, machines can outlive a gateway that is killed; CleanupOrphans
// finds them at the next start.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// waitExited is not available without waitid(WNOWAIT); the driver then
// leaves a dead machine's children alone rather than risk a reused group ID.
func waitExited(pid int) error { return errors.ErrUnsupported }

// killGroup signals the process group led by pid; ESRCH is not an error.
func killGroup(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return errors.New("refusing to signal pid <= 0")
	}
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d with %v: %w", pid, sig, err)
	}
	return nil
}
