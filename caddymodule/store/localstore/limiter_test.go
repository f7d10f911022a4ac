package localstore

import (
	"strconv"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// These tests drive the limiter with chosen times, which the conformance
// suite (real clocks, shared with Redis) cannot.

func TestSlidingLogAtTheEdges(t *testing.T) {
	l := newLimiter()
	ck := counterKey{'s', "203.0.113.7", store.SlidingLog, 3, 1000, ""}
	for i, at := range []int64{10_000, 10_100, 10_200} {
		if d := l.take(ck, at); !d.Allowed || d.Remaining != int64(2-i) || d.Reset.UnixMilli() != 11_000 {
			t.Fatalf("request %d at %d: %+v", i, at, d)
		}
	}
	d := l.take(ck, 10_500)
	if d.Allowed || d.RetryAfter != 500*time.Millisecond {
		t.Fatalf("fourth request: %+v, want denied, retry in 500ms", d)
	}
	// the first time leaves the window at exactly 11_000
	if d := l.take(ck, 10_999); d.Allowed {
		t.Fatalf("at 10999: %+v, want denied", d)
	}
	if d := l.take(ck, 11_000); !d.Allowed || d.Remaining != 0 || d.Reset.UnixMilli() != 11_100 {
		t.Fatalf("at 11000: %+v", d)
	}
}

// A clock that steps back must never let more than the limit in.
func TestSlidingLogClockStepsBack(t *testing.T) {
	l := newLimiter()
	ck := counterKey{'k', "id", store.SlidingLog, 2, 1000, ""}
	l.take(ck, 5_000)
	l.take(ck, 4_000) // the clock went back a second
	if d := l.take(ck, 4_100); d.Allowed {
		t.Fatalf("third request within the window was admitted: %+v", d)
	}
}

// The log grows on demand, keeps its order across growth and wrap-around,
// and never takes more slots than the limit.
func TestSlidingLogRing(t *testing.T) {
	l := newLimiter()
	ck := counterKey{'k', "id", store.SlidingLog, 20, 100, ""}
	now := int64(1_000_000)
	admitted := 0
	for range 1000 {
		now += 3
		if l.take(ck, now).Allowed {
			admitted++
		}
	}
	// 20 per 100ms over 3000ms, one request every 3ms: the log is always
	// full after its first 20, so exactly 20 per 100ms get in, 600 in all.
	if admitted < 590 || admitted > 600 {
		t.Fatalf("admitted %d, want about 600", admitted)
	}
	c := l.shards[0].counters[ck]
	for i := range l.shards {
		if got := l.shards[i].counters[ck]; got != nil {
			c = got
		}
	}
	if len(c.log) > 20 {
		t.Fatalf("log has %d slots for a limit of 20", len(c.log))
	}
}

func TestSlidingWindowWeighsThePreviousWindow(t *testing.T) {
	l := newLimiter()
	ck := counterKey{'k', "id", store.SlidingWindow, 10, 1000, ""}
	// the subject's windows start at 100_000 + its offset
	at := func(ms int64) int64 { return ms + store.WindowOffset('k', "id", time.Second).Milliseconds() }
	for range 10 {
		if !l.take(ck, at(100_100)).Allowed {
			t.Fatal("denied within the limit")
		}
	}
	if d := l.take(ck, at(100_900)); d.Allowed || d.Reset.UnixMilli() < at(101_000) {
		t.Fatalf("eleventh request in one window: %+v", d)
	}
	// Half-way through the next window the previous one weighs 5: five
	// more, resetting at the window's end; the last, Remaining 0, when the
	// refusal after it does.
	var last store.Decision
	for i := range 5 {
		last = l.take(ck, at(101_500))
		if !last.Allowed || i < 4 && last.Reset.UnixMilli() != at(102_000) {
			t.Fatalf("request %d half-way through the next window: %+v", i, last)
		}
	}
	if d := l.take(ck, at(101_500)); d.Allowed || d.RetryAfter <= 0 || !last.Reset.Equal(d.Reset) {
		t.Fatalf("sixth request: %+v, want denied with a wait, resetting when the fifth does (%v)", d, last.Reset)
	}
	// Two windows later nothing is remembered.
	if d := l.take(ck, at(103_000)); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("after two windows: %+v", d)
	}
}

// A clock that steps back across a window boundary must never let more
// than the limit in: the window counted before the step stays the current
// one, in full, with its own previous window, until it ends.
func TestSlidingWindowClockStepsBack(t *testing.T) {
	l := newLimiter()
	ck := counterKey{'k', "id", store.SlidingWindow, 10, 1000, ""}
	at := func(ms int64) int64 { return ms + store.WindowOffset('k', "id", time.Second).Milliseconds() }
	for range 9 {
		l.take(ck, at(100_500))
	}
	if !l.take(ck, at(101_010)).Allowed { // the next window: the previous weighs 9 × 0.99
		t.Fatal("first request of the next window denied")
	}
	// the clock went back 50 ms, into the first window, which holds 9 and
	// the next one's 1: full
	if d := l.take(ck, at(100_960)); d.Allowed {
		t.Fatalf("request after the clock stepped back: %+v", d)
	}
}

// Each subject's windows start at its own offset, so that windows of many
// subjects end spread over the period, not all at once. A counter kept
// under other window boundaries (an upgrade) that began before now's
// window is not forgotten: it weighs as the previous window (one that
// begins after it: TestSlidingWindowClockStepsBack).
func TestSlidingWindowOffsets(t *testing.T) {
	ends := map[int64]bool{}
	for i := range 100 {
		off := store.WindowOffset('k', strconv.Itoa(i), time.Minute)
		if off < 0 || off >= time.Minute {
			t.Fatalf("offset %v outside the window", off)
		}
		if off != store.WindowOffset('k', strconv.Itoa(i), time.Minute) {
			t.Fatal("offset differs between calls")
		}
		ends[off.Milliseconds()/1000] = true
	}
	if len(ends) < 40 {
		t.Fatalf("100 subjects' windows end in only %d of 60 seconds", len(ends))
	}

	l := newLimiter()
	ck := counterKey{'s', "moved", store.SlidingWindow, 10, 1000, ""}
	c := &counter{start: 200_000, cur: 10, last: 200_000, offset: 400}
	l.shard(ck).counters[ck] = c
	// now 200_500: this window started at 200_400, the stored one 400ms
	// before it, so its 10 weigh 0.9 × 10 = 9: one more request
	if d := l.take(ck, 200_500); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("first request under the new boundaries: %+v", d)
	}
	if d := l.take(ck, 200_500); d.Allowed {
		t.Fatalf("the moved counter was forgotten: %+v", d)
	}
}

func TestSweepDropsOnlyIdleCounters(t *testing.T) {
	l := newLimiter()
	idle := counterKey{'s', "idle", store.SlidingWindow, 10, 1000, ""}
	busy := counterKey{'s', "busy", store.SlidingLog, 10, 60_000, ""}
	l.take(idle, 0)
	l.take(busy, 0)
	if n := l.sweep(2_000); n != 0 {
		t.Fatalf("swept %d counters at two windows", n)
	}
	if n := l.sweep(2_001); n != 1 || l.size() != 1 {
		t.Fatalf("swept %d, %d left; want the idle one dropped", n, l.size())
	}
}

func BenchmarkLimiterTake(b *testing.B) {
	l := newLimiter()
	for _, a := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		b.Run(string(a), func(b *testing.B) {
			// one admitted request a millisecond against 1000 per 1s: the
			// steady state of a busy key, every take admits and expires one
			ck := counterKey{'k', "0123456789abcdef", a, 1000, 1000, ""}
			now := time.Now().UnixMilli()
			b.ReportAllocs()
			for b.Loop() {
				now++
				l.take(ck, now)
			}
		})
	}
}

// A flood of anonymous subjects (a client rotating through IPv6 /64s) is
// held to maxCountersPerShard a shard: the subjects that admitted a
// request least recently go first, keys' counters never.
func TestFloodOfSubjectsIsBounded(t *testing.T) {
	l := newLimiter()
	key := counterKey{'k', "id", store.SlidingWindow, 10, 3_600_000, ""}
	early := counterKey{'s', "ip6:2001:db8:ffff::/64", store.SlidingWindow, 20, 3_600_000, ""}
	l.take(key, 1_000)
	l.take(early, 1_000)
	for i := range 2 * maxCountersPerShard * shardCount {
		l.take(counterKey{'s', "ip6:2001:db8:" + strconv.Itoa(i) + "::/64", store.SlidingWindow, 20, 3_600_000, ""}, int64(2_000+i))
	}
	for i := range l.shards {
		if n := len(l.shards[i].counters); n > maxCountersPerShard+1 {
			t.Fatalf("shard %d holds %d counters, more than %d and the key's", i, n, maxCountersPerShard)
		}
	}
	sh := l.shard(early)
	if _, kept := sh.counters[early]; kept {
		t.Error("the subject seen least recently was kept through the flood")
	}
	if _, kept := l.shard(key).counters[key]; !kept {
		t.Error("the key's counter was dropped for the flood")
	}
}

// The moment a sliding window admits a request again is checked, not only
// worked out: at 100 per 10 minutes, with 150 in the previous window and
// 15 in this one, the closed form says 264,000 ms into the window, where
// the weighted count, 150 * 0.56, is 84.00000000000001 in doubles, and the
// request would be refused; the reset is a millisecond later. (The window
// starts after now, as after a clock stepped back, so that this one
// stands whatever now is; scripts.go is tested alike.)
func TestSlidingWindowResetIsWhenARequestIsAdmitted(t *testing.T) {
	const limit, window = 100, 600_000
	start := int64(6_000_000)
	c := &counter{start: start, cur: 15, prev: 150}
	allowed, _, reset, _ := c.slidingWindow(start-1000, limit, window)
	if allowed || reset != start+264_001 {
		t.Fatalf("allowed %v, reset %d ms into the window, want refused until 264001", allowed, reset-start)
	}
	if allowed, _, _, _ := c.slidingWindow(reset-1, limit, window); allowed {
		t.Fatal("admitted a millisecond before the reset")
	}
	if allowed, _, _, _ := c.slidingWindow(reset, limit, window); !allowed {
		t.Fatal("refused at the reset")
	}
}
