package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/freeport"
)

// Sentinel is a real Redis Sentinel owned by one test, monitoring one
// primary under a master name, with a quorum of one: it alone decides a
// failover.
type Sentinel struct {
	Addr   string // host:port on 127.0.0.1
	Master string // the name it monitors the primary under
}

// StartSentinel starts a Sentinel that monitors primary as master, and
// returns once it knows the primary's replicas (none, or those following
// it); it stops with the test.
func StartSentinel(tb testing.TB, primary *Server, master string, replicas int) *Sentinel {
	tb.Helper()
	s := &Sentinel{Master: master}
	onFreePorts(tb, func() error {
		dir, port := tb.TempDir(), freeport.Get(tb)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		// a Sentinel rewrites its config file as it learns: it must be its own
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 3000\n",
			port, dir, master, primary.port, master, master)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
		cmd, exited, err := spawn(s.Addr, conf, "--sentinel", "--loglevel", "warning")
		if err == nil {
			tb.Cleanup(func() { kill(cmd, exited) })
		}
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rdb := s.client(tb)
	for {
		known, err := rdb.Replicas(ctx, master).Result()
		if err == nil && len(known) >= replicas {
			return s
		}
		if ctx.Err() != nil {
			tb.Fatalf("sentinel on %s did not see %d replicas of %s within 20s: %v, %v", s.Addr, replicas, master, known, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// client is a go-redis client of the Sentinel, closed with the test.
func (s *Sentinel) client(tb testing.TB) *redis.SentinelClient {
	rdb := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// URL is the go-redis URL of the Sentinel.
func (s *Sentinel) URL() string { return "redis://" + s.Addr }

// Failover has the Sentinel promote a replica, now, waits until it names
// the new primary, and then demotes the old primary to a replica of it.
//
// The Sentinel would demote the old primary itself, but only once it has
// reported itself a primary for 8 s after the failover (and the Sentinel
// asks a replica only every 10 s): until then the old primary takes the
// writes of clients that have not yet switched, and loses them when it is
// demoted at last. That is how Redis failover is (asynchronous, see
// min-replicas-to-write); a test that writes after Failover wants the
// failover over.
func (s *Sentinel) Failover(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rdb := s.client(tb)
	before, err := rdb.GetMasterAddrByName(ctx, s.Master).Result()
	if err != nil {
		tb.Fatal(err)
	}
	// refused (NOGOODSLAVE) until the Sentinel has heard from the replica
	for {
		err := rdb.Failover(ctx, s.Master).Err()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			tb.Fatalf("SENTINEL FAILOVER %s: %v", s.Master, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		now, err := rdb.GetMasterAddrByName(ctx, s.Master).Result()
		if err == nil && !slices.Equal(now, before) {
			follow(tb, net.JoinHostPort(before[0], before[1]), net.JoinHostPort(now[0], now[1]))
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("sentinel still names %v as the primary 20s after a failover: %v", before, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
