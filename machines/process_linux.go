package machines

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// sysProcAttr puts the machine in its own process group (so Stop signals
// it and its children together) and asks the kernel to SIGKILL it when the
// gateway dies, so that machines never outlive their gateway. Pdeathsig is
// tied to the forking thread, not the process: see ProcessDriver.starter.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// waitExited blocks until pid has exited without reaping it (WNOWAIT), so
// the pid and its process group ID stay reserved until cmd.Wait.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// killGroup signals the process group led by pid. ESRCH (already gone) is
// the normal outcome of a race with the exit and is not an error.
func killGroup(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return errors.New("refusing to signal pid <= 0") // would hit far more than a machine
	}
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d with %v: %w", pid, sig, err)
	}
	return nil
}
