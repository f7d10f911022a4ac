//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly

package localstore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// flock locks f, the lock file at path, for this process (lockFile).
func flock(f *os.File, path string) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("locking key store: %v", err)
	}
	holder := ""
	if b, rerr := os.ReadFile(path); rerr == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			holder = fmt.Sprintf(" (process %d)", pid)
		}
	}
	return fmt.Errorf("key store %s is in use by another keygate%s: one process at a time may own it (stop the other, or give this one another data directory, or use Redis)",
		strings.TrimSuffix(path, lockSuffix), holder)
}
