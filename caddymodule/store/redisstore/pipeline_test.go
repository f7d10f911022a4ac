package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

func open(t testing.TB, srv *redistest.Server, timeout time.Duration) *Store {
	t.Helper()
	s, err := Open(srv.URL(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Concurrent calls share pipelines; each must get its own reply. Every
// caller has a fresh counter with its own limit, so the remaining count of
// its first request tells whose reply it got.
func TestPipelinedCallsGetTheirOwnReplies(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			p := store.Policy{Limit: int64(i + 2), Window: time.Minute}
			d, err := s.Limit(context.Background(), "caller", p, store.SlidingWindow, store.Ask{})
			if err != nil {
				t.Error(err)
				return
			}
			if !d.Allowed || d.Remaining != int64(i+1) {
				t.Errorf("caller %d: %+v, want allowed with %d remaining", i, d, i+1)
			}
		})
	}
	wg.Wait()
}

// However many calls are in flight, the hot path holds two connections to
// Redis: the sender's, which carries each batch of the calls that queued
// while the one before it was on the wire, and the direct call's. More
// senders would each send smaller batches (see pipeline.go).
func TestConcurrentCallsShareOnePipeline(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	// loaded beforehand, so that no call falls back to EVAL on a pooled
	// connection
	rdb := srv.Client(t)
	if err := limitScript.Load(context.Background(), rdb).Err(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if failed, err := concurrentCalls(s, 4*maxBatch); failed > 0 {
			t.Fatalf("%d of %d concurrent calls failed: %v", failed, 4*maxBatch, err)
		}
	}
	if n := s.client.PoolStats().TotalConns; n > 2 {
		t.Errorf("the hot path opened %d connections to Redis, want at most 2", n)
	}
}

// After a Redis restart or SCRIPT FLUSH the scripts are gone; the hot path
// loads them again instead of failing.
func TestScriptsSurviveScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "flushed")
	policy := store.Policy{Limit: 1000, Window: time.Minute}
	check := func() error {
		v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: policy})
		if err != nil || v.Status != store.KeyValid || !v.Limit.Allowed {
			return fmt.Errorf("check: %+v, %v", v, err)
		}
		if _, err := s.Limit(ctx, "anon", policy, store.SlidingLog, store.Ask{}); err != nil {
			return fmt.Errorf("limit: %v", err)
		}
		return nil
	}
	rdb := srv.Client(t)
	flush := func() {
		t.Helper()
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
	flush()
	if err := check(); err != nil {
		t.Fatal(err)
	}

	// concurrent calls, most of them in the sender's pipeline, which loads
	// the script again call by call from each call's own arguments
	flush()
	errs := make(chan error, 64)
	start := make(chan struct{})
	for range cap(errs) {
		go func() {
			<-start
			errs <- check()
		}()
	}
	close(start)
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A hung Redis must not hold calls much longer than the store timeout,
// however many are queued behind the stuck pipeline, and the store must
// work again once Redis answers.
func TestHungRedisTimesOut(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 200 * time.Millisecond
	s := open(t, srv, timeout)
	ctx := context.Background()
	p := store.Policy{Limit: 1000, Window: time.Minute}
	if _, err := s.Limit(ctx, "warm", p, store.SlidingWindow, store.Ask{}); err != nil {
		t.Fatal(err)
	}

	srv.Pause()
	resumed := false
	defer func() {
		if !resumed {
			srv.Resume()
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	// enough calls for eight full pipelines
	for range 8 * maxBatch {
		wg.Go(func() {
			if _, err := s.Limit(ctx, "hung", p, store.SlidingWindow, store.Ask{}); err == nil {
				t.Error("a call succeeded against a stopped Redis")
			}
		})
	}
	wg.Wait()
	// Generous for a loaded machine; without the deadline on queued calls
	// they would wait for one stuck pipeline after another: 8 x timeout.
	if took := time.Since(start); took > 4*timeout+500*time.Millisecond {
		t.Errorf("calls against a hung Redis took %s with a %s timeout", took, timeout)
	}

	srv.Resume()
	resumed = true
	waitRecovered(t, s)
}

// A call made while a batch is on the wire waits for that batch's reply
// before it goes out, so with Redis slow (a round trip of more than half
// the timeout) a call that queued long may fail; the calls that queued
// after it, in the same batch, have the timeout from when each was made.
// (With the batch's deadline its oldest call's, they failed with it.)
func TestSlowRedisFailsOnlyTheCallsThatQueuedTooLong(t *testing.T) {
	const timeout, roundTrip = time.Second, 600 * time.Millisecond
	s, slow, _ := openSlow(t, timeout)
	slow.Delay(roundTrip)
	ctx := context.Background()
	p := store.Policy{Limit: 1000, Window: time.Minute}
	start := time.Now()
	calls := []struct {
		at          time.Duration // after start
		wantSuccess bool
	}{
		{0, true},                       // direct, back at 600 ms
		{50 * time.Millisecond, true},   // pipelined, sent at once: back at 650
		{100 * time.Millisecond, false}, // queued: sent at 650, back at 1250, gives up at 1100
		{500 * time.Millisecond, true},  // queued, same batch: gives up at 1500
	}
	var wg sync.WaitGroup
	for i, call := range calls {
		time.Sleep(time.Until(start.Add(call.at)))
		wg.Go(func() {
			made := time.Now()
			_, err := s.Limit(ctx, fmt.Sprint("slow", i), p, store.SlidingWindow, store.Ask{})
			took := time.Since(made)
			switch {
			case call.wantSuccess && err != nil:
				t.Errorf("call %d (made at %s) failed after %s: %v", i, call.at, took, err)
			case !call.wantSuccess && err == nil:
				t.Errorf("call %d (made at %s) succeeded after %s, more than the timeout", i, call.at, took)
			case err != nil && took > timeout+200*time.Millisecond:
				t.Errorf("call %d failed after %s, %s past its timeout", i, took, took-timeout)
			}
		})
	}
	wg.Wait()
}

// A call whose caller gave up while it queued behind a slow batch (its
// client left, or its deadline passed) is not sent afterwards: Redis would
// count a request that was answered without it.
func TestCallsGivenUpInTheQueueAreNotSent(t *testing.T) {
	const timeout, roundTrip = time.Second, 400 * time.Millisecond
	s, slow, _ := openSlow(t, timeout)
	slow.Delay(roundTrip)
	p := store.Policy{Limit: 1000, Window: time.Minute}
	var wg sync.WaitGroup
	for i := range 2 { // one direct, one pipelined: the sender is busy
		wg.Go(func() {
			if _, err := s.Limit(context.Background(), fmt.Sprint("busy", i), p, store.SlidingWindow, store.Ask{}); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(20 * time.Millisecond)
	}
	gone, leave := context.WithCancel(context.Background())
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	for _, ctx := range []context.Context{gone, short, gone, short} {
		wg.Go(func() {
			if _, err := s.Limit(ctx, "given up", p, store.SlidingWindow, store.Ask{}); err == nil {
				t.Error("a call given up while queued succeeded")
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	leave()
	wg.Wait()

	slow.Delay(0)
	time.Sleep(roundTrip) // what was sent meanwhile reaches Redis first
	d, err := s.Limit(context.Background(), "given up", p, store.SlidingWindow, store.Ask{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Remaining != p.Limit-1 {
		t.Errorf("Redis counted %d calls given up while queued", p.Limit-1-d.Remaining)
	}
}

// After a SCRIPT FLUSH a batch's calls come back NOSCRIPT and are sent
// again with EVAL, one at a time, but for those whose callers gave up
// while the batch was on its way: Redis would count requests nobody is
// told of.
func TestCallsGivenUpAreNotSentAgainAfterNoScript(t *testing.T) {
	const timeout, delay = time.Second, 600 * time.Millisecond
	s, slow, srv := openSlow(t, timeout)
	slow.Delay(delay) // what the store sends reaches Redis 600 ms later
	p := store.Policy{Limit: 1000, Window: time.Minute}
	start := time.Now()
	var wg sync.WaitGroup
	for _, call := range []struct {
		at, giveUp time.Duration
		subject    string
	}{
		{0, timeout, "direct"},                          // the direct line, busy until 600 ms
		{50 * time.Millisecond, timeout, "first batch"}, // sent at once, answered at 650
		// sent at 650 with the next, in Redis at 1250: gives up at 1100
		{300 * time.Millisecond, 800 * time.Millisecond, "given up"},
		{500 * time.Millisecond, timeout, "alive"}, // the same batch: waits until 1500
	} {
		time.Sleep(time.Until(start.Add(call.at)))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), call.giveUp)
			defer cancel()
			_, _ = s.Limit(ctx, call.subject, p, store.SlidingWindow, store.Ask{})
		})
	}
	// the second batch is on its way (sent at 650, in Redis at 1250)
	time.Sleep(time.Until(start.Add(900 * time.Millisecond)))
	if err := srv.Client(t).ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	slow.Delay(0)
	time.Sleep(delay) // what was sent meanwhile reaches Redis first
	for subject, want := range map[string]int64{"given up": 0, "first batch": 1} {
		d, err := s.Limit(context.Background(), subject, p, store.SlidingWindow, store.Ask{})
		if err != nil {
			t.Fatal(err)
		}
		if counted := p.Limit - 1 - d.Remaining; counted != want {
			t.Errorf("%q: Redis counted %d calls before, want %d", subject, counted, want)
		}
	}
}

// openSlow is a store whose Redis (the last result) is reached through a
// forwarder that may be slowed, with the scripts loaded and both of the
// hot path's lines open: a test that slows it then times only its own
// calls.
func openSlow(t *testing.T, timeout time.Duration) (*Store, *redistest.Forwarder, *redistest.Server) {
	srv := redistest.Start(t)
	if err := limitScript.Load(context.Background(), srv.Client(t)).Err(); err != nil {
		t.Fatal(err)
	}
	slow := redistest.Forward(t, srv.Addr)
	s, err := Open(slow.URL(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if failed, err := concurrentCalls(s, 64); failed > 0 {
		t.Fatalf("%d of 64 calls failed: %v", failed, err)
	}
	return s, slow, srv
}

// A call that must dial, to a Redis that never answers (a blackholed
// address), fails within the store timeout: go-redis bounds each dial by
// DialTimeout but tries one five times, and retries the command.
func TestCallsToAnUnreachableRedisEndWithinTheTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := unreachable(t, timeout)
	p := store.Policy{Limit: 10, Window: time.Minute}
	for _, call := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"limit", func(ctx context.Context) error {
			_, err := s.Limit(ctx, "unreachable", p, store.SlidingWindow, store.Ask{})
			return err
		}},
		{"check", func(ctx context.Context) error {
			_, err := s.CheckKey(ctx, store.Check{KeyID: "id", Hash: apikey.Sum("sk_x"), Policy: p})
			return err
		}},
		{"key lookup", func(ctx context.Context) error {
			_, err := s.KeyIDByHash(ctx, apikey.Sum("sk_x"))
			return err
		}},
	} {
		start := time.Now()
		err := call.do(context.Background())
		// generous for a loaded machine; without the bound, 5 s a dial
		if took := time.Since(start); err == nil || took > 2*time.Second {
			t.Errorf("%s: %v after %s, want an error within about %s", call.name, err, took, timeout)
		}
	}
}

// unreachable is a store whose Redis never answers a dial, as a blackholed
// address does: each dial hangs until its context ends (go-redis bounds it
// by DialTimeout, 5 s, and tries five times).
func unreachable(t *testing.T, timeout time.Duration) *Store {
	s := New(redis.NewClient(&redis.Options{
		Addr: "192.0.2.1:6379", // TEST-NET: never dialled
		Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
		DialTimeout:           5 * time.Second,
		MaxRetries:            1,
		ContextTimeoutEnabled: true,
		Protocol:              2,
	}), timeout)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Closing a store whose sender is dialing an unreachable Redis (a reload
// that lets go of it during an outage) does not wait for the dial: closing
// the client ends reads on its connections, not a dial on its way.
func TestCloseDoesNotWaitForASendersDial(t *testing.T) {
	const timeout = 10 * time.Second
	s := unreachable(t, timeout)
	go concurrentCalls(s, maxBatch) // one goes out directly, the others to the sender
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > timeout/4 { // generous for a loaded machine
		t.Errorf("Close took %s with the sender dialing an unreachable Redis (timeout %s)", took, timeout)
	}
}

// Closing the store (a config reload that lets go of it) does not wait for
// a hung Redis: the direct call and the sender's pipeline on their way end
// at once with an error, not after the store timeout.
func TestCloseDoesNotWaitForAHungRedis(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 10 * time.Second
	s := open(t, srv, timeout)
	waitRecovered(t, s) // the direct call and the sender hold a connection
	srv.Pause()
	t.Cleanup(srv.Resume)
	failed := make(chan int32, 1)
	go func() {
		n, _ := concurrentCalls(s, 4*maxBatch)
		failed <- n
	}()
	time.Sleep(200 * time.Millisecond) // the calls are on their way
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Generous for a loaded machine, and far from the timeout.
	if took := time.Since(start); took > timeout/4 {
		t.Errorf("Close took %s with calls on their way to a hung Redis (timeout %s)", took, timeout)
	}
	select {
	case n := <-failed:
		if n != 4*maxBatch {
			t.Errorf("%d of %d calls to a hung Redis failed after Close, want all", n, 4*maxBatch)
		}
	case <-time.After(timeout / 4):
		t.Error("calls to a hung Redis still wait after Close")
	}
}

// Close closes every connection the store made, its lines' too (they
// close with the client's pool, not one by one).
func TestCloseClosesEveryConnection(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s := open(t, srv, time.Second) // its cleanup closes it again: harmless
	waitRecovered(t, s)            // the direct call and the sender hold a connection
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		clients, err := rdb.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(clients, "\n"); n == 1 { // this test's own
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%d connections to Redis after Close, want only the test's:\n%s", n, clients)
		}
	}
}

// A closed store fails its calls at once, and closing it again is
// harmless (an error, not a panic): its owner may not know it was closed.
func TestClosedStoreFailsCallsAndClosesAgain(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	waitRecovered(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if failed, _ := concurrentCalls(s, 4*maxBatch); failed != 4*maxBatch {
		t.Errorf("%d of %d calls to a closed store failed, want all", failed, 4*maxBatch)
	}
	if err := s.Close(); err == nil {
		t.Error("closing a closed store: no error")
	}
}

// After Redis restarts, the sender's and the direct call's connections are
// dead; they must reconnect by themselves.
func TestPipelinesRecoverAfterRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	waitRecovered(t, s) // all senders hold a connection now
	srv.Restart()
	waitRecovered(t, s)
}

// The direct call and the sender do not pay the pool's health check on
// every call, but a line idle for more than lineIdle goes back to the pool:
// a connection that Redis (or the network) closed meanwhile is never used,
// and the calls after the quiet spell succeed.
func TestIdleLinesAreCheckedBeforeUse(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	p := store.Policy{Limit: 1 << 20, Window: time.Minute}
	calls := func(when string) {
		t.Helper()
		// one alone (direct), then a burst (the sender's pipeline)
		if _, err := s.Limit(ctx, "quiet", p, store.SlidingWindow, store.Ask{}); err != nil {
			t.Fatalf("direct call %s: %v", when, err)
		}
		if failed, err := concurrentCalls(s, 64); failed > 0 {
			t.Fatalf("%d of 64 concurrent calls %s failed: %v", failed, when, err)
		}
	}
	calls("before")
	rdb := srv.Client(t)
	if err := rdb.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(lineIdle + 200*time.Millisecond)
	calls("after Redis closed the idle connections")
}

// A line's connection closed while in use (Redis restarted, or a proxy in
// front of it closing connections past an age) fails no call: one that
// finds it closed is sent once more, on a new connection, as go-redis does
// its pool's. Here Redis closes every connection between two calls, too
// soon for the lines to go back to the pool.
func TestLinesClosedUnderUseFailNoCall(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	rdb := srv.Client(t)
	ctx := context.Background()
	p := store.Policy{Limit: 1 << 20, Window: time.Minute}
	for i := range 20 {
		// one alone (direct), then a burst (the sender's pipeline)
		if _, err := s.Limit(ctx, "busy", p, store.SlidingWindow, store.Ask{}); err != nil {
			t.Fatalf("round %d: direct call: %v", i, err)
		}
		if failed, err := concurrentCalls(s, 64); failed > 0 {
			t.Fatalf("round %d: %d of 64 concurrent calls failed: %v", i, failed, err)
		}
		if err := rdb.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// countingThroughAProxy is a pipeliner on a plain client that reaches a
// Redis through a Forwarder, and a call for it that increments "counter"
// (a reply of one line, which CutAfterOneReply passes whole).
func countingThroughAProxy(t *testing.T) (*redistest.Server, *redistest.Forwarder, *redis.Client, *pipeliner, func() *scriptCall) {
	srv := redistest.Start(t)
	proxy := redistest.Forward(t, srv.Addr)
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	p := newPipeliner(client, time.Second)
	t.Cleanup(p.close)
	incr := newHotScript(`return redis.call('INCR', KEYS[1])`)
	ctx := context.Background()
	if err := incr.Load(ctx, client).Err(); err != nil {
		t.Fatal(err)
	}
	call := func() *scriptCall {
		return p.newCall(ctx, incr.Script, []string{"counter"}, []any{"evalsha", incr.sha, 1, "counter"})
	}
	return srv, proxy, client, p, call
}

// A batch whose connection closes after some of its replies came: those
// calls keep their replies and are not sent again (Redis counted them;
// go-redis marks them failed too), and only the others are.
func TestBatchCutShortSendsOnlyTheUnansweredAgain(t *testing.T) {
	srv, proxy, _, p, call := countingThroughAProxy(t)
	ctx := context.Background()
	var l line
	p.exec(&l, []*scriptCall{call()}, make([]redis.Cmder, 0, 2)) // the line's connection
	if err := srv.Client(t).Set(ctx, "counter", 0, 0).Err(); err != nil {
		t.Fatal(err)
	}
	proxy.CutAfterOneReply()
	batch := []*scriptCall{call(), call()}
	p.exec(&l, batch, make([]redis.Cmder, 0, 2))
	n, err := srv.Client(t).Get(ctx, "counter").Int64()
	if err != nil {
		t.Fatal(err)
	}
	first, err1 := batch[0].cmd.Int64()
	second, err2 := batch[1].cmd.Int64()
	// the second, sent again, counts twice if Redis ran it before the
	// connection closed (as go-redis's retries would), the first once
	if first != 1 || err1 != nil || second != n || err2 != nil || n > 3 {
		t.Errorf("calls got %d (%v) and %d (%v); counted %d times", first, err1, second, err2, n)
	}
}

// A batch whose connection closes after one reply, and whose resend's
// connection closes after one reply too: the call answered in the resend
// keeps its reply (Redis counted it) as the one answered before it; only
// the call answered in neither fails.
func TestBatchCutShortTwiceKeepsEveryReply(t *testing.T) {
	_, proxy, client, p, call := countingThroughAProxy(t)
	ctx := context.Background()
	var l line
	p.exec(&l, []*scriptCall{call()}, make([]redis.Cmder, 0, 3)) // the line's connection
	// an idle connection in the pool for the resend, whose handshake's
	// reply would take the second cut
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	proxy.CutAfterOneReply()
	proxy.CutAfterOneReply()
	batch := []*scriptCall{call(), call(), call()}
	p.exec(&l, batch, make([]redis.Cmder, 0, 3))
	for i, c := range batch[:2] {
		if got, err := c.cmd.Int64(); err != nil || got < 2 {
			t.Errorf("call %d, answered: got %d, %v", i, got, err)
		}
	}
	if err := batch[2].cmd.Err(); err == nil {
		t.Errorf("call 2, answered in neither: got %v, want an error", batch[2].cmd.Val())
	}
}

// waitRecovered waits until a burst of concurrent calls, enough for several
// pipelines, all succeed.
func waitRecovered(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		failed, err := concurrentCalls(s, 4*maxBatch)
		if failed == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d calls still fail: %v", failed, 4*maxBatch, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// concurrentCalls makes n calls at once, under a limit none reaches, and
// says how many failed, and with what error (one of them).
func concurrentCalls(s *Store, n int) (failed int32, err error) {
	p := store.Policy{Limit: 1 << 40, Window: time.Minute}
	var count atomic.Int32
	var last atomic.Pointer[error]
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := s.Limit(context.Background(), "burst", p, store.SlidingWindow, store.Ask{}); err != nil {
				count.Add(1)
				last.Store(&err)
			}
		})
	}
	wg.Wait()
	if e := last.Load(); e != nil {
		err = *e
	}
	return count.Load(), err
}

// A batch whose first call Redis answers with an error go-redis takes for
// a passing one (TRYAGAIN, a slot migrating in a resharding cluster;
// LOADING; MASTERDOWN) is not sent again: go-redis resent the whole batch
// on the same connection, and every other call of it ran twice.
func TestABatchIsNotSentTwiceOverAPassingError(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	p := newPipeliner(client, time.Second)
	t.Cleanup(p.close)
	ctx := context.Background()
	tryAgain := newHotScript(`
if redis.call('INCR', KEYS[1]) == 1 then return redis.error_reply('TRYAGAIN a slot is migrating') end
return 0`)
	incr := newHotScript(`return redis.call('INCR', KEYS[1])`)
	for _, s := range []hotScript{tryAgain, incr} {
		if err := s.Load(ctx, client).Err(); err != nil {
			t.Fatal(err)
		}
	}
	call := func(s hotScript, key string) *scriptCall {
		return p.newCall(ctx, s.Script, []string{key}, []any{"evalsha", s.sha, 1, key})
	}
	var l line
	batch := []*scriptCall{call(tryAgain, "tries"), call(incr, "counter")}
	p.exec(&l, batch, make([]redis.Cmder, 0, 2))
	if err := batch[0].cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "TRYAGAIN") {
		t.Errorf("the first call: %v, want its TRYAGAIN", err)
	}
	n, err := srv.Client(t).Get(ctx, "counter").Int64()
	if got, _ := batch[1].cmd.Int64(); err != nil || n != 1 || got != 1 {
		t.Errorf("the second call got %d (%v); Redis ran it %d times, want once", got, batch[1].cmd.Err(), n)
	}
}

// A call on its way when the store closes (its connection closed under it,
// here to a hung Redis) fails with a store error that says it may have
// run: not errStoreClosed nor the closed client's error, on which a
// cluster's store sends a call again through another pipeliner (a node
// replaced, a request counted twice), nor context.Canceled, which reads
// as a client that left.
func TestCloseFailsACallOnItsWayAsOneThatMayHaveRun(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, 2*time.Second)
	waitRecovered(t, s) // the direct call and the sender hold a connection
	srv.Pause()
	t.Cleanup(srv.Resume)
	p := store.Policy{Limit: 1 << 20, Window: time.Minute}
	call := func() <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := s.Limit(context.Background(), "closing", p, store.SlidingWindow, store.Ask{})
			done <- err
		}()
		return done
	}
	direct := call()
	for s.hot.inFlight.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	sent := call()                     // to the sender, the direct line being busy
	time.Sleep(200 * time.Millisecond) // on its way
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err == nil || errors.Is(err, errStoreClosed) || isRedirect(err) || errors.Is(err, context.Canceled) {
		t.Errorf("the sender's call: %v, want an error that says it may have run", err)
	}
	if err := <-direct; err == nil || errors.Is(err, errStoreClosed) || isRedirect(err) || errors.Is(err, context.Canceled) {
		t.Errorf("the direct call: %v, want an error that says it may have run", err)
	}
}
