// Package atomicfile writes a file so that a crash, a full disk or a
// refused permission leaves either the old file or the new one, never a
// part of either.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes data to path, readable and writable by its owner only: to
// a temporary file in the same directory, synced, then renamed over path,
// and the directory synced, so that the rename survives a crash too.
func Write(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
