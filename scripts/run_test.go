// Package scripts tests the one-command run: scripts/run must bring the
// whole stack up on a fresh machine, print a working demo key once, and
// stop cleanly on Ctrl-C.
package scripts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/freeport"
)

var keyLine = regexp.MustCompile(`^\s+(sk_[0-9a-f]{48})\s*$`)

// runScript starts scripts/run and returns the printed demo key (empty on a
// later start), and a function that sends Ctrl-C and waits.
func runScript(t *testing.T, state string, port, adminPort, backendPort int) (key string, stop func() error) {
	t.Helper()
	cmd := exec.Command("./run")
	cmd.Env = append(os.Environ(),
		"KEYGATE_STATE_DIR="+state,
		"KEYGATE_BIN_DIR="+filepath.Join(state, "bin"), // not the repository's bin/
		fmt.Sprintf("KEYGATE_LISTEN=http://127.0.0.1:%d", port),
		fmt.Sprintf("KEYGATE_ADMIN=127.0.0.1:%d", adminPort),
		fmt.Sprintf("KEYGATE_BACKEND=127.0.0.1:%d", backendPort),
		"KEYGATE_REDIS=", "BACKEND_REDIS_URL=", "KEYGATE_UPSTREAM_SECRET=",
	)
	// Ctrl-C goes to the process group; and should the test binary die
	// without its cleanups, TERM goes to the script, whose trap stops
	// keygate and the backend
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) && exit.ExitCode() == 130 { // 128+SIGINT: stopped by Ctrl-C, as asked
				return nil
			}
			return err
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return fmt.Errorf("scripts/run did not stop within 20s of Ctrl-C")
		}
	}
	t.Cleanup(func() {
		_ = stop()
		if t.Failed() {
			mu.Lock()
			t.Logf("scripts/run stderr:\n%s", logs.String())
			mu.Unlock()
		}
	})

	ready := make(chan string, 1)
	ended := make(chan struct{}) // stdout closed before ready: scripts/run exited
	go func() {
		sc := bufio.NewScanner(stdout)
		var found string
		for sc.Scan() {
			line := sc.Text()
			if m := keyLine.FindStringSubmatch(line); m != nil {
				found = m[1]
			}
			if strings.HasPrefix(line, "Press Ctrl-C") || strings.Contains(line, "Ctrl-C stops") {
				ready <- found
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		close(ended)
	}()
	select {
	case key = <-ready:
	case <-ended:
		t.Fatal("scripts/run ended before reporting ready")
	case <-time.After(5 * time.Minute): // includes building both binaries
		t.Fatal("scripts/run did not report ready within 5 minutes")
	}
	return key, stop
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestRunServesAnAuthenticatedRequest(t *testing.T) {
	state := t.TempDir()
	port, adminPort, backendPort := freeport.Get(t), freeport.Get(t), freeport.Get(t)
	key, stop := runScript(t, state, port, adminPort, backendPort)
	if key == "" {
		t.Fatal("first start printed no demo key")
	}
	shorten := func(key string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/api/shortlinks", port),
			strings.NewReader(`{"url":"https://example.com"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", key)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, body := shorten(key); status != http.StatusOK || !strings.Contains(body, `"slug"`) {
		t.Fatalf("demo key request: %d %s", status, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("Ctrl-C: %v", err)
	}
	for _, p := range []int{port, adminPort, backendPort} {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second); err == nil {
			c.Close()
			t.Fatalf("port %d still open after Ctrl-C", p)
		}
	}

	// Second start: same data, the key still works and is not printed again.
	again, _ := runScript(t, state, port, adminPort, backendPort)
	if again != "" {
		t.Fatal("the demo key was printed a second time")
	}
	if status, body := shorten(key); status != http.StatusOK {
		t.Fatalf("demo key after restart: %d %s", status, body)
	}
}
