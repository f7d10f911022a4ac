package redisstore

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redisstats"
	"github.com/keygate/keygate/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// The limiter scripts against a real Redis, per algorithm: "serial" is one
// caller at a time (each call goes out directly), "parallel64" is 64
// concurrent callers (calls share pipelines). ns/op of the parallel run is
// wall time divided by calls, i.e. the inverse of throughput. redis-µs/call
// is the time Redis spent running the script (its commandstats): the cost
// on Redis's CPU, without the network, and far less noisy than ns/op.

func BenchmarkCheckKey(b *testing.B) {
	srv := redistest.Start(b)
	s := open(b, srv, time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(b, s, "bench")
	// as a gateway has it cached: with its current revision, so the
	// script does not send the record back
	k, err := s.KeyByName(ctx, k.Name)
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		c := store.Check{KeyID: k.ID, Hash: k.Hash, Revision: k.Revision, Policy: store.Policy{Limit: 1 << 40, Window: time.Second}, Algorithm: a}
		benchSerialAndParallel(b, srv, string(a), func() error {
			v, err := s.CheckKey(ctx, c)
			if err == nil && (v.Status != store.KeyValid || !v.Limit.Allowed || v.Fresh != nil) {
				b.Fatalf("refused: %+v", v)
			}
			return err
		})
	}
}

// BenchmarkCheckKeyOnCluster is CheckKey on a three-node Redis Cluster,
// for 30 keys spread over the nodes (one pipeline per primary; redis-µs/call
// is the first node's).
func BenchmarkCheckKeyOnCluster(b *testing.B) {
	cluster := redistest.StartCluster(b, 3)
	s := openCluster(b, cluster)
	defer s.Close()
	ctx := context.Background()
	var checks []store.Check
	for i := range 30 {
		k, _ := storetest.MustCreate(b, s, "bench"+strconv.Itoa(i))
		k, err := s.KeyByName(ctx, k.Name)
		if err != nil {
			b.Fatal(err)
		}
		checks = append(checks, store.Check{KeyID: k.ID, Hash: k.Hash, Revision: k.Revision, Policy: store.Policy{Limit: 1 << 40, Window: time.Second}})
	}
	var n atomic.Int64
	benchSerialAndParallel(b, cluster.Nodes[0], "sliding_window", func() error {
		_, err := s.CheckKey(ctx, checks[n.Add(1)%int64(len(checks))])
		return err
	})
}

func BenchmarkLimit(b *testing.B) {
	benchLimit(b, store.Ask{})
}

// BenchmarkLease is a gateway asking for a lease of 64 requests: under
// sliding_log Redis logs each of them, so redis-µs/call grows with the
// lease.
func BenchmarkLease(b *testing.B) {
	benchLimit(b, store.Ask{Take: 64, Spread: time.Second})
}

// benchLimit takes what ask says per call (one request, or a lease) from
// the limits of a thousand client addresses, as anonymous traffic has,
// under each algorithm.
func benchLimit(b *testing.B, ask store.Ask) {
	srv := redistest.Start(b)
	s := open(b, srv, time.Second)
	ctx := context.Background()
	p := store.Policy{Limit: 1 << 40, Window: time.Second}
	for _, a := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		var n atomic.Int64
		benchSerialAndParallel(b, srv, string(a), func() error {
			_, err := s.Limit(ctx, "198.51.100."+strconv.FormatInt(n.Add(1)%1000, 10), p, a, ask)
			return err
		})
	}
}

func benchSerialAndParallel(b *testing.B, srv *redistest.Server, name string, call func() error) {
	b.Run(name+"/serial", func(b *testing.B) {
		b.ReportAllocs()
		reportScriptTime(b, srv)
		for b.Loop() {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run(name+"/parallel64", func(b *testing.B) {
		b.ReportAllocs()
		reportScriptTime(b, srv)
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 callers
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// reportScriptTime resets Redis's command statistics and, when b ends,
// reports the time Redis spent per script call since.
func reportScriptTime(b *testing.B, srv *redistest.Server) {
	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr, Protocol: 2})
	if err := rc.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		defer rc.Close()
		info, err := rc.Info(ctx, "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		if c := redisstats.Parse(info)["evalsha"]; c.Calls > 0 {
			b.ReportMetric(float64(c.Usec)/float64(c.Calls), "redis-µs/call")
		}
	})
}
