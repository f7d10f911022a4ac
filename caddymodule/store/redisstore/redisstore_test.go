package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(redistest.Start(t).URL(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// A Redis URL that does not parse is reported without its password: the
// error reaches the log of the config load.
func TestOpenDoesNotQuoteThePassword(t *testing.T) {
	_, err := Open("redis://:s3cr%et@localhost:6379/0", time.Second)
	if err == nil || strings.Contains(err.Error(), "s3cr") {
		t.Fatalf("a URL that does not parse: %v, want an error without its password", err)
	}
}

// After a failover the client keeps connections to the demoted primary,
// now a replica, until it hears of the new one: a hash that replica does
// not hold may be a key created since, so a miss is asked of the primary,
// which a replica refuses (READONLY) instead of calling the key unknown.
func TestUnknownHashIsNotAReplicasWord(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "known")
	if _, err := s.KeyIDByHash(ctx, apikey.Sum("sk_unknown")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an unknown hash on the primary: %v, want store.ErrNotFound", err)
	}
	// a primary that is not there: the replica keeps serving reads
	if err := srv.Client(t).ReplicaOf(ctx, "127.0.0.1", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if id, err := s.KeyIDByHash(ctx, k.Hash); err != nil || id != k.ID {
		t.Fatalf("a known hash on the replica: %q, %v", id, err)
	}
	if _, err := s.KeyIDByHash(ctx, apikey.Sum("sk_unknown")); !redis.IsReadOnlyError(err) {
		t.Fatalf("an unknown hash on the replica: %v, want READONLY", err)
	}
}

// No secret may reach Redis, neither in a key name nor in a value.
func TestNoPlaintextInRedis(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	k, secret := storetest.MustCreate(t, s, "secretive")
	if _, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 5, Window: time.Minute}, Algorithm: store.SlidingLog}); err != nil {
		t.Fatal(err)
	}
	rdb := srv.Client(t)
	names, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	secretHex := strings.TrimPrefix(secret, "sk_")
	for _, name := range names {
		if strings.Contains(name, secretHex) {
			t.Fatalf("redis key name %q contains the secret", name)
		}
		var values []string
		switch typ := rdb.Type(ctx, name).Val(); typ {
		case "string":
			values = []string{rdb.Get(ctx, name).Val()}
		case "hash":
			for f, v := range rdb.HGetAll(ctx, name).Val() {
				values = append(values, f, v)
			}
		case "zset":
			values = rdb.ZRange(ctx, name, 0, -1).Val()
		default:
			t.Fatalf("unexpected type %s of %s", typ, name)
		}
		if strings.Contains(strings.Join(values, " "), secretHex) {
			t.Fatalf("redis value of %q contains the secret", name)
		}
	}
}

// A sliding_log lease is logged staggered across its spread, the i-th
// request at store.StaggeredDeadline, exactly where the gateway's lease
// table stops admitting it; the log lives until its newest member has
// counted a full window, and a later single request never shortens that.
func TestStaggeredLogMembers(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	p := store.Policy{Limit: 100, Window: time.Minute}
	d, err := s.Limit(ctx, "stagger", p, store.SlidingLog, store.Ask{Take: 5, Spread: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Staggered || d.Granted != 5 || d.Lease != 2*time.Second {
		t.Fatalf("lease %+v, want 5 staggered over 2s", d)
	}
	rdb := srv.Client(t)
	key := counterKey('s', "stagger", p, store.SlidingLog)
	members, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
	if err != nil || len(members) != 5 {
		t.Fatalf("log %v %v, want 5 members", members, err)
	}
	now := time.UnixMilli(int64(members[0].Score))
	for i, m := range members[1:] {
		at := now.Add(store.StaggeredDeadline(int64(i+1), 4, d.Lease))
		if got := time.UnixMilli(int64(m.Score)); !got.Equal(at) {
			t.Fatalf("request %d of the lease logged at +%v, want +%v", i+1, got.Sub(now), at.Sub(now))
		}
	}
	lives := func() time.Duration {
		ttl, err := rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ttl
	}
	if ttl := lives(); ttl < p.Window+d.Lease-time.Second || ttl > p.Window+d.Lease {
		t.Fatalf("log lives %v, want the window and the lease, %v", ttl, p.Window+d.Lease)
	}
	if _, err := s.Limit(ctx, "stagger", p, store.SlidingLog, store.Ask{}); err != nil {
		t.Fatal(err)
	}
	if ttl := lives(); ttl < p.Window+d.Lease-time.Second {
		t.Fatalf("a single request cut the log's life to %v, under the lease's %v", ttl, p.Window+d.Lease)
	}

	// A lease asked ahead logs every request it grants across the lease,
	// none at the call's moment: that one would lapse unused.
	before := redisTime(t, rdb)
	d, err = s.Limit(ctx, "ahead", p, store.SlidingLog, store.Ask{Take: 4, Spread: 2 * time.Second, Ahead: true})
	if err != nil || !d.Staggered || d.Granted != 4 || d.Lease != 2*time.Second {
		t.Fatalf("lease ahead %+v %v, want 4 staggered over 2s", d, err)
	}
	after := redisTime(t, rdb)
	members, err = rdb.ZRangeWithScores(ctx, counterKey('s', "ahead", p, store.SlidingLog), 0, -1).Result()
	if err != nil || len(members) != 4 {
		t.Fatalf("log %v %v, want the 4 of the lease", members, err)
	}
	called := time.UnixMilli(int64(members[0].Score)).Add(-store.StaggeredDeadline(1, 4, d.Lease))
	if called.Before(before) || called.After(after) {
		t.Fatalf("lease ahead called at %v, between %v and %v", called, before, after)
	}
	for i, m := range members {
		at := called.Add(store.StaggeredDeadline(int64(i+1), 4, d.Lease))
		if got := time.UnixMilli(int64(m.Score)); !got.Equal(at) {
			t.Fatalf("request %d of the lease ahead logged at +%v, want +%v", i+1, got.Sub(called), at.Sub(called))
		}
	}

	// A lease far larger than Lua's unpack takes at once is logged whole.
	big := store.Policy{Limit: 100_000, Window: time.Minute}
	d, err = s.Limit(ctx, "big lease", big, store.SlidingLog, store.Ask{Take: 20_000, Spread: time.Minute})
	if err != nil || d.Granted != 20_000 {
		t.Fatalf("lease of 20,000: %+v %v", d, err)
	}
	if n := rdb.ZCard(ctx, counterKey('s', "big lease", big, store.SlidingLog)).Val(); n != 20_000 {
		t.Fatalf("lease of 20,000 logged %d", n)
	}
}

// A sliding_window counter is written whole, with its expiry, by its
// window's first request only: it lives to the end of the next window (as
// the previous window's count, it matters until then), and the window's
// other requests only add to its count, leaving the expiry as it was.
func TestWindowCounterLivesThroughTheNextWindow(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	rdb := srv.Client(t)
	p := store.Policy{Limit: 100, Window: time.Minute}
	key := counterKey('s', "counter", p, store.SlidingWindow)
	first, err := s.Limit(ctx, "counter", p, store.SlidingWindow, store.Ask{})
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := rdb.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	// first.Reset ends this window; the next one ends a window later
	if want := time.Until(first.Reset) + p.Window; ttl < want-time.Second || ttl > want+time.Second {
		t.Fatalf("counter lives %v, want to the end of the next window, %v", ttl, want)
	}
	next, err := s.Limit(ctx, "counter", p, store.SlidingWindow, store.Ask{Take: 3, Spread: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if next.Granted != 3 || next.Remaining != first.Remaining-3 {
		t.Fatalf("second call %+v after %+v, want 3 more counted", next, first)
	}
	later, err := rdb.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if later > ttl {
		t.Fatalf("a later request in the window moved the expiry from %v to %v", ttl, later)
	}
	if c, err := rdb.HGet(ctx, key, "c").Int64(); err != nil || c != 4 {
		t.Fatalf("count %d %v, want 4", c, err)
	}
}

// redisTime is the Redis server's clock, in whole milliseconds as the
// scripts read it.
func redisTime(t *testing.T, rdb *redis.Client) time.Time {
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return now.Truncate(time.Millisecond)
}

// An epoch rolled back (a failover to a replica that missed the last bump)
// and moved again by another change does not come back to the value the
// lost bump had reached: leases granted under that value stay unusable.
func TestEpochRolledBackDoesNotRepeatItself(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	storetest.MustCreate(t, s, "changing")
	before, err := s.Epoch(ctx)
	if err != nil || before == 0 {
		t.Fatalf("a fresh epoch: %d, %v; want a random start, not 0", before, err)
	}
	disable := func(k *store.Key) error { k.Enabled = !k.Enabled; return nil }
	if _, err := s.UpdateKey(ctx, "changing", disable); err != nil {
		t.Fatal(err)
	}
	lost, _ := s.Epoch(ctx)
	srv.Client(t).Set(ctx, epochKey, before, 0) // the failover's replica
	if _, err := s.UpdateKey(ctx, "changing", disable); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.Epoch(ctx); again == lost || again == before {
		t.Fatalf("epoch %d, bumped to %d, rolled back and bumped again: %d", before, lost, again)
	}
}

// A window counter stored under a window that starts after Redis's now (the
// clock stepped back: a failover to a replica whose clock is behind) stays
// the current window, counted in full with its own previous window: taken
// for the previous one, it was weighted down and its previous forgotten.
func TestWindowCounterAfterTheClockSteppedBack(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	rdb := srv.Client(t)
	p := store.Policy{Limit: 10, Window: time.Minute}
	w, off := p.Window.Milliseconds(), store.WindowOffset('s', "stepped", p.Window).Milliseconds()
	now := redisTime(t, rdb).UnixMilli()
	start := store.WindowStart(now, off, w)
	// the next window, full: 9 of its previous one, 1 of its own
	if err := rdb.HSet(ctx, counterKey('s', "stepped", p, store.SlidingWindow), "s", start+w, "c", 1, "p", 9).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if d, err := s.Limit(ctx, "stepped", p, store.SlidingWindow, store.Ask{}); err != nil || d.Allowed {
			t.Fatalf("request %d after the clock stepped back: %+v, %v", i+1, d, err)
		}
	}
}

// A sliding_log member's name ("<ms>-<count>") may come again once Redis's
// clock stepped back (a failover to a replica whose clock is behind): the
// log then holds names of the times to come. The request is still counted,
// under another name, and the limit holds exactly. (Added under the taken
// name, it replaced that member and the count stayed: every request in
// such a millisecond was admitted.)
func TestLogAfterTheClockSteppedBack(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	rdb := srv.Client(t)
	const logged, room = 5000, 10
	p := store.Policy{Limit: logged + room, Window: time.Minute}
	// what a primary 5 s ahead wrote: for each of the 5 s to come, the
	// name a request would be given then, with the log at its size now
	now := redisTime(t, rdb).UnixMilli()
	members := make([]redis.Z, 0, logged)
	for ms := now; ms < now+logged; ms++ {
		members = append(members, redis.Z{Score: float64(ms), Member: fmt.Sprintf("%d-%d", ms, logged)})
	}
	if err := rdb.ZAdd(ctx, counterKey('s', "stepped", p, store.SlidingLog), members...).Err(); err != nil {
		t.Fatal(err)
	}
	admitted := 0
	for range 2 * room {
		d, err := s.Limit(ctx, "stepped", p, store.SlidingLog, store.Ask{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			admitted++
		}
	}
	if admitted != room {
		t.Fatalf("%d of %d requests admitted with room for %d", admitted, 2*room, room)
	}
}

// The script checks the moment a sliding window admits a request again,
// as the embedded limiter does (localstore's
// TestSlidingWindowResetIsWhenARequestIsAdmitted, the same numbers): the
// closed form says 264,000 ms into the window, where 150 * 0.56 is
// 84.00000000000001 and a request would be refused. The window starts
// after Redis's now, as after its clock stepped back, so that this holds
// whatever now is.
func TestSlidingWindowResetIsWhenARequestIsAdmitted(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	rdb := srv.Client(t)
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	p := store.Policy{Limit: 100, Window: 10 * time.Minute}
	start := now.UnixMilli() + 60_000
	if err := rdb.HSet(ctx, counterKey('s', "client", p, store.SlidingWindow), "s", start, "c", 15, "p", 150).Err(); err != nil {
		t.Fatal(err)
	}
	d, err := s.Limit(ctx, "client", p, store.SlidingWindow, store.Ask{})
	if err != nil || d.Allowed || d.Reset.UnixMilli() != start+264_001 {
		t.Fatalf("%+v (%v): want refused, resetting 264001 ms into the window (%d)", d, err, d.Reset.UnixMilli()-start)
	}
}
