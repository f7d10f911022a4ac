// Package redistest runs a real, throwaway redis-server for tests: on a free
// loopback port, with its data in the test's temp dir, never one that is
// already running on the machine.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/freeport"
)

// Server is a redis-server child process owned by one test.
type Server struct {
	Addr string // host:port on 127.0.0.1

	tb    testing.TB
	dir   string
	port  int
	extra []string // more redis-server arguments (a cluster node's)
	cmd   *exec.Cmd
}

// Start launches redis-server on a free port and stops it when the test ends.
// The test is skipped with a clear message only when redis-server is not
// installed (.ci/run installs it, so CI never skips).
func Start(tb testing.TB) *Server {
	tb.Helper()
	return start(tb)
}

func start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatalf("redis-server not found in PATH: install it (apt-get install redis-server); .ci/run does")
	}
	s := &Server{tb: tb, dir: tb.TempDir(), port: freeport.Get(tb), extra: extra}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	s.Restart()
	tb.Cleanup(s.Stop)
	return s
}

// URL is the go-redis URL of the server (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Stop kills the server; Restart brings it back on the same port, empty.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process cannot die cleanly
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pause freezes the server (SIGSTOP): connections stay open and nothing
// answers, like a hung or unreachable Redis. Resume continues it, data
// intact.
func (s *Server) Pause() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

// Restart starts the server again (or for the first time) on the same port.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
	}
	cmd := exec.Command("redis-server", append(args, s.extra...)...)
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("starting redis-server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr) == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	s.tb.Fatalf("redis-server on %s did not answer PING within 10s", s.Addr)
}

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}

// Follow makes s a replica of primary and returns once it has synced
// (master_link_status:up).
func (s *Server) Follow(tb testing.TB, primary *Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// the first sync then starts at once, not after 5 s
	if err := primary.Client(tb).ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		tb.Fatal(err)
	}
	rdb := s.Client(tb)
	if err := rdb.Do(ctx, "replicaof", "127.0.0.1", strconv.Itoa(primary.port)).Err(); err != nil {
		tb.Fatal(err)
	}
	for {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("%s did not sync with %s within 20s: %v", s.Addr, primary.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Promote makes a replica a primary again (REPLICAOF NO ONE).
func (s *Server) Promote(tb testing.TB) {
	tb.Helper()
	if err := s.Client(tb).Do(context.Background(), "replicaof", "no", "one").Err(); err != nil {
		tb.Fatal(err)
	}
}

// Client is a go-redis client of s, closed with the test.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// CatchUp returns once s, a replica of primary, has everything primary
// had written when it was called (replication is asynchronous: a replica
// promoted before that loses what it lacks).
func (s *Server) CatchUp(tb testing.TB, primary *Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := replOffset(tb, primary.Client(tb).Info(ctx, "replication"))
	rdb := s.Client(tb)
	for replOffset(tb, rdb.Info(ctx, "replication")) < want {
		if ctx.Err() != nil {
			tb.Fatalf("%s did not catch up with %s within 20s", s.Addr, primary.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replOffset reads master_repl_offset from INFO replication.
func replOffset(tb testing.TB, info *redis.StringCmd) int64 {
	tb.Helper()
	text, err := info.Result()
	if err != nil {
		tb.Fatal(err)
	}
	_, rest, ok := strings.Cut(text, "master_repl_offset:")
	if !ok {
		tb.Fatalf("no master_repl_offset in INFO replication: %q", text)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]), 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}
