package localstore

import (
	"fmt"
	"os"
	"strconv"
)

// lockFile takes an exclusive lock on path (created if missing, 0600),
// without waiting: two processes writing one key file would each rewrite
// it whole from what they hold, and the one that wrote last would drop the
// other's changes (a rolling restart that starts the new gateway before
// the old one stops, or two gateways on one data directory). The lock
// holds until the returned file is closed, or the process ends. Where the
// system has no flock, the file is opened and nothing is locked.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking key store: %v", err)
	}
	if err := flock(f, path); err != nil {
		f.Close()
		return nil, err
	}
	// who holds it, for another's error message; best effort
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
