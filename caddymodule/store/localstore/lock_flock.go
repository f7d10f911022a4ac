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

// lockFile takes an exclusive lock on path (created if missing, 0600),
// without waiting: two processes writing one key file would each rewrite
// it whole from what they hold, and the one that wrote last would drop the
// other's changes (a rolling restart that starts the new gateway before
// the old one stops, or two gateways on one data directory). The lock
// holds until the returned file is closed, or the process ends.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking key store: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (process %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("key store %s is in use by another keygate%s: one process at a time may own it (stop the other, or give this one another data directory, or use Redis)",
				strings.TrimSuffix(path, lockSuffix), holder)
		}
		return nil, fmt.Errorf("locking key store: %v", err)
	}
	// who holds it, for the message above; best effort
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
