// Package redistest runs a real, throwaway redis-server for tests: on a free
// loopback port, with its data in the test's temp dir, never one that is
// already running on the machine.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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

	tb      testing.TB
	dir     string
	port    int
	busPort int // a cluster node's bus port; 0 for a server outside a cluster
	extra   []string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
}

// Start launches redis-server on a free port and stops it when the test ends.
// The test fails with a clear message when redis-server is not installed
// (.ci/run installs it).
func Start(tb testing.TB) *Server {
	tb.Helper()
	return start(tb, false)
}

// StartWith launches redis-server as Start does, with args after the
// harness's own: a deployment's command line (its ACL users, say). A
// setting given again in args wins. The harness reaches the server as a
// user of its own, whatever args do to the default user; clients of URL
// and Client are the default user.
func StartWith(tb testing.TB, args ...string) *Server {
	tb.Helper()
	return start(tb, false, args...)
}

// errExited says redis-server exited before it answered: most often because
// its port was taken between freeport's check and its bind (by a server of
// a test binary running beside this one).
var errExited = errors.New("redis-server exited before it answered")

// start launches a server, or a cluster node with its bus on a port of its
// own, and tries fresh ports when one is lost to another process.
func start(tb testing.TB, clusterNode bool, extra ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatalf("redis-server not found in PATH: install it (apt-get install redis-server); .ci/run does")
	}
	s := &Server{tb: tb, dir: tb.TempDir(), extra: extra}
	tb.Cleanup(s.Stop)
	onFreePorts(tb, func() error {
		s.port = freeport.Get(tb)
		if clusterNode {
			// Redis's default bus port, the data port + 10000, is one
			// freeport never checked, and may lie in the ephemeral range.
			s.busPort = freeport.Get(tb)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		return s.launch()
	})
	return s
}

// onFreePorts calls launch, which starts a server on ports it takes from
// freeport, again (three times in all) while the server exits before it
// answers: a port found free can be lost to another process before the
// server binds it.
func onFreePorts(tb testing.TB, launch func() error) {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		err := launch()
		if err == nil {
			return
		}
		if !errors.Is(err, errExited) || attempt == 3 {
			tb.Fatal(err)
		}
		tb.Logf("%v; trying other ports", err)
	}
}

// URL is the go-redis URL of the server (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Stop kills the server; Restart brings it back on the same port, empty.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	kill(s.cmd, s.exited)
	s.cmd = nil
}

// kill ends a redis-server process, paused or not, and waits for its end.
func kill(cmd *exec.Cmd, exited <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused process cannot die cleanly
	_ = cmd.Process.Kill()
	<-exited
}

// Pause freezes the server (SIGSTOP): connections stay open and nothing
// answers, like a hung or unreachable Redis. Resume continues it, data
// intact.
func (s *Server) Pause() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

// Restart starts the server again on the same port.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.launch(); err != nil {
		s.tb.Fatal(err)
	}
}

// launch (re)starts redis-server on s's ports and returns once it answers;
// its errors carry what redis-server printed.
func (s *Server) launch() error {
	s.Stop()
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
		// the harness's own user (servedBy), which StartWith's args leave be
		"--user", harnessUser, "on", "nopass", "~*", "&*", "+@all",
	}
	if s.busPort != 0 {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(s.busPort),
			"--cluster-config-file", "nodes.conf", // in the node's own dir
			"--cluster-node-timeout", "2000",
		)
	}
	cmd, exited, err := spawn(s.Addr, append(args, s.extra...)...)
	s.cmd, s.exited = cmd, exited
	return err
}

// spawn starts redis-server with args and returns once the server
// answering on addr is this process; when it is not, the process is gone
// and the error carries what it printed (errExited when it exited first).
func spawn(addr string, args ...string) (*exec.Cmd, chan struct{}, error) {
	cmd := exec.Command("redis-server", args...)
	// killed with the test binary, should it die without its cleanups (a
	// timeout's panic, a signal): no server left on the port
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer // one writer for both: exec then writes from one goroutine
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.After(10 * time.Second)
	for {
		// this process, not another test binary's server on the same port
		if servedBy(addr, cmd.Process.Pid) {
			return cmd, exited, nil
		}
		select {
		case <-exited:
			return nil, nil, fmt.Errorf("%w on %s: %s", errExited, addr, strings.TrimSpace(out.String()))
		case <-deadline:
			kill(cmd, exited)
			return nil, nil, fmt.Errorf("redis-server on %s did not answer within 10s: %s", addr, strings.TrimSpace(out.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// harnessUser is the ACL user as whom the harness asks a server it
// started whose process it is (any password: nopass); Sentinels have no
// such user, and answer their default user.
const harnessUser = "redistest"

// servedBy tells whether the redis-server answering on addr is process pid.
func servedBy(addr string, pid int) bool {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := conn.Write([]byte("AUTH " + harnessUser + " -\r\nINFO server\r\n")); err != nil {
		return false
	}
	r := bufio.NewReader(conn)
	// AUTH's reply: +OK, or an error where the user is not the harness's
	// (a Sentinel), whose default user may run INFO
	if _, err := r.ReadString('\n'); err != nil {
		return false
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil || strings.HasPrefix(line, "-") {
			return false // not up yet (-LOADING), or gone
		}
		if rest, ok := strings.CutPrefix(line, "process_id:"); ok {
			return strings.TrimSpace(rest) == strconv.Itoa(pid)
		}
	}
}

// Follow makes s a replica of primary and returns once it has synced
// (master_link_status:up).
func (s *Server) Follow(tb testing.TB, primary *Server) {
	tb.Helper()
	follow(tb, s.Addr, primary.Addr)
}

// follow makes the server at addr a replica of the one at primary and
// returns once it has synced (master_link_status:up).
func follow(tb testing.TB, addr, primary string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// the first sync then starts at once, not after 5 s
	if err := addrClient(tb, primary).ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		tb.Fatal(err)
	}
	host, port, err := net.SplitHostPort(primary)
	if err != nil {
		tb.Fatal(err)
	}
	rdb := addrClient(tb, addr)
	if err := rdb.Do(ctx, "replicaof", host, port).Err(); err != nil {
		tb.Fatal(err)
	}
	for {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("%s did not sync with %s within 20s: %v", addr, primary, err)
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
	return addrClient(tb, s.Addr)
}

// addrClient is a go-redis client of the server at addr, closed with the
// test.
func addrClient(tb testing.TB, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
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
