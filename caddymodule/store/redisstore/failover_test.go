package redisstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

// A failover behind the address the store connects to (a DNS name or a
// proxy that follows the primary, as managed Redis services give): the old
// primary, now a replica, answers READONLY on the connections already open
// to it. The hot path's own lines drop such a connection (go-redis leaves
// it in a bad state), and the next call's reaches the new primary: calls
// recover while they keep coming, rather than failing for as long as the
// lines stay busy (a line goes back to the pool only after an idle second).
func TestHotPathFollowsAFailoverBehindItsAddress(t *testing.T) {
	primary, replica := redistest.Start(t), redistest.Start(t)
	replica.Follow(t, primary)
	name := redistest.Forward(t, primary.Addr)
	s, err := Open(name.URL(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recoversFromFailover(t, s, primary, replica, func() {
		replica.Promote(t)
		primary.Follow(t, replica)
		name.PointTo(replica.Addr)
	})
}

// Behind Redis Sentinel (OpenSentinel) the store follows the primary to the
// replica the Sentinel promotes.
func TestSentinelFailover(t *testing.T) {
	primary, replica := redistest.Start(t), redistest.Start(t)
	replica.Follow(t, primary)
	sentinel := redistest.StartSentinel(t, primary, "keygate-primary", 1)
	s, err := OpenSentinel(sentinel.URL(), sentinel.Master, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recoversFromFailover(t, s, primary, replica, func() { sentinel.Failover(t) })
}

// recoversFromFailover creates a key on s (on primary), waits for replica
// to have it, and keeps eight callers checking it throughout: every call
// must succeed before failover runs, and within 10 s after it a spell of
// 0.3 s must pass in which calls succeed and none fails.
func recoversFromFailover(t *testing.T, s *Store, primary, replica *redistest.Server, failover func()) {
	t.Helper()
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "failover")
	replica.CatchUp(t, primary)
	check := func() error {
		v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 1 << 40, Window: time.Minute}})
		if err == nil && (v.Status != store.KeyValid || !v.Limit.Allowed) {
			err = fmt.Errorf("verdict %+v", v)
		}
		return err
	}

	// calls in flight all along, so that both lines (direct and pipelined)
	// stay busy
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if check() == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(200 * time.Millisecond)
	if ok.Load() == 0 || failed.Load() > 0 {
		t.Fatalf("before the failover: %d calls succeeded, %d failed", ok.Load(), failed.Load())
	}

	failover()
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		okBefore, failedBefore := ok.Load(), failed.Load()
		time.Sleep(300 * time.Millisecond)
		if ok.Load() > okBefore && failed.Load() == failedBefore {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the failover calls still fail (%d failed in the last 0.3 s, %d succeeded); last error: %v",
				failed.Load()-failedBefore, ok.Load()-okBefore, check())
		}
	}
}
