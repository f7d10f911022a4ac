package backend_test

import (
	"os"
	"testing"
)

// mainTB lets the shared redis-server outlive the test that started it: its
// Cleanup is deferred to TestMain instead of that test's end.
type mainTB struct{ *testing.T }

var mainCleanups []func()

func (m *mainTB) Cleanup(f func()) { mainCleanups = append(mainCleanups, f) }

func (m *mainTB) TempDir() string {
	dir, err := os.MkdirTemp("", "backend-redis-")
	if err != nil {
		m.Fatal(err)
	}
	mainCleanups = append(mainCleanups, func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(mainCleanups) - 1; i >= 0; i-- {
		mainCleanups[i]()
	}
	os.Exit(code)
}
