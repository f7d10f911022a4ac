//go:build !(linux || darwin || freebsd || openbsd || netbsd || dragonfly)

package localstore

import (
	"fmt"
	"os"
)

// lockFile opens path without a lock where the system has no flock (see
// lock_flock.go): one process at a time must own the key file there.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking key store: %v", err)
	}
	return f, nil
}
