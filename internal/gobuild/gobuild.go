// Package gobuild builds this module's commands for tests that run them as
// real processes (a second gateway, the whole stack), each at most once per
// test binary.
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Builder builds packages into one temporary directory. The zero value is
// ready to use; TestMain calls Remove after the tests.
type Builder struct {
	mu    sync.Mutex
	dir   string
	built map[string]error // package -> its build's outcome
}

// Binary returns the path of pkg (as the go command takes it, e.g.
// "../cmd/keygate"), built on first use and named after its last element.
// A failed build fails tb, now and on every later call.
func (b *Builder) Binary(tb testing.TB, pkg string) string {
	tb.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir == "" {
		dir, err := os.MkdirTemp("", "keygate-bin-")
		if err != nil {
			tb.Fatal(err)
		}
		b.dir, b.built = dir, map[string]error{}
	}
	path := filepath.Join(b.dir, filepath.Base(pkg))
	err, done := b.built[pkg]
	if !done {
		if out, buildErr := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); buildErr != nil {
			err = fmt.Errorf("go build %s: %v\n%s", pkg, buildErr, out)
		}
		b.built[pkg] = err
	}
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// Remove deletes everything built.
func (b *Builder) Remove() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
		b.dir, b.built = "", nil
	}
}
