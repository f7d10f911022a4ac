package redisstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

// openCluster opens a store on cluster, emptied first (scripts included).
func openCluster(t testing.TB, cluster *redistest.Cluster) *Store {
	t.Helper()
	cluster.FlushAll(t)
	s, err := OpenCluster(cluster.URL(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The store works on a Redis Cluster: the whole conformance suite on three
// nodes that hold a third of the hash slots each. A single-server client
// fails it (MOVED) for whatever lives on the other nodes.
func TestConformanceOnCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	storetest.Run(t, func(t *testing.T) store.Store { return openCluster(t, cluster) })
}

// Keys, their counters and anonymous subjects' counters spread over the
// nodes; calls in flight together go out in one pipeline per node, and
// each gets its own reply, the scripts loaded on each node by the first
// call that finds them missing (NOSCRIPT). Every key is then listed, and
// found by name, whichever node holds it.
func TestClusterSpreadsKeysAndPipelinedCalls(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	s := openCluster(t, cluster)
	defer s.Close()
	ctx := context.Background()
	keys := make([]store.Key, 30)
	for i := range keys {
		keys[i], _ = storetest.NewKey(t, fmt.Sprintf("key-%02d", i))
		if err := s.CreateKey(ctx, keys[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			// a fresh counter with a limit of its own: the remaining count
			// tells whose reply the caller got
			p := store.Policy{Limit: int64(i + 2), Window: time.Minute}
			if i%2 == 0 {
				k := keys[i%len(keys)]
				v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: p, Algorithm: store.SlidingLog})
				if err != nil || v.Status != store.KeyValid || !v.Limit.Allowed || v.Limit.Remaining != int64(i+1) {
					t.Errorf("key caller %d: %+v, %v; want valid, allowed, %d remaining", i, v, err, i+1)
				}
				return
			}
			d, err := s.Limit(ctx, fmt.Sprintf("198.51.100.%d", i), p, store.SlidingWindow, store.Ask{})
			if err != nil || !d.Allowed || d.Remaining != int64(i+1) {
				t.Errorf("anonymous caller %d: %+v, %v; want allowed with %d remaining", i, d, err, i+1)
			}
		})
	}
	wg.Wait()

	for _, node := range cluster.Nodes {
		n, err := node.Client(t).DBSize(ctx).Result()
		if err != nil || n == 0 {
			t.Errorf("node %s holds %d keys (%v): the keys did not spread", node.Addr, n, err)
		}
	}
	listed, err := s.Keys(ctx)
	if err != nil || len(listed) != len(keys) {
		t.Fatalf("listed %d keys (%v), want %d", len(listed), err, len(keys))
	}
	for _, k := range keys {
		if got, err := s.KeyByName(ctx, k.Name); err != nil || got.ID != k.ID {
			t.Errorf("key %s by name: %+v, %v", k.Name, got, err)
		}
	}
}

// One hung node fails the calls for its own slots, and no other: each
// primary has its own pipeline. (With one pipeline across the cluster,
// every batch waited for the hung node, and every call failed.)
func TestClusterHungNodeFailsOnlyItsSlots(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	s := openCluster(t, cluster)
	defer s.Close()
	keys := make([]store.Key, 12)
	for i := range keys {
		keys[i], _ = storetest.MustCreate(t, s, fmt.Sprintf("key-%02d", i))
	}
	onHung := make([]bool, len(keys)) // asked before node 0 hangs
	for i, k := range keys {
		onHung[i] = cluster.Owner(t, recordKey(k.ID)) == 0
	}
	if !slices.Contains(onHung, true) || !slices.Contains(onHung, false) {
		t.Fatal("the keys did not spread over the nodes")
	}
	// once the others take the hung node for failed (cluster-node-timeout,
	// 2 s here) they would answer CLUSTERDOWN for every slot: the
	// gateway's part is what comes before
	for _, node := range cluster.Nodes {
		if err := node.Client(t).ConfigSet(context.Background(), "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	ok, failed := make([]atomic.Int64, len(keys)), make([]atomic.Int64, len(keys))
	cluster.Nodes[0].Pause()
	defer cluster.Nodes[0].Resume()
	stop := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := g; time.Now().Before(stop); i++ {
				k := keys[i%len(keys)]
				_, err := s.CheckKey(context.Background(), store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 1 << 40, Window: time.Minute}})
				if err == nil {
					ok[i%len(keys)].Add(1)
				} else {
					failed[i%len(keys)].Add(1)
				}
			}
		})
	}
	wg.Wait()
	for i := range keys {
		if hung := onHung[i]; hung && ok[i].Load() > 0 || !hung && (failed[i].Load() > 0 || ok[i].Load() == 0) {
			t.Errorf("key %d (on the hung node: %v): %d calls succeeded, %d failed", i, hung, ok[i].Load(), failed[i].Load())
		}
	}
}

// A slot moved to another node (a resharding, or a failover the client
// has not heard of yet): the old node answers MOVED, and the call goes
// through the cluster client, which follows it; the counter carries on
// where it was.
func TestClusterCallsFollowAMovedSlot(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	s := openCluster(t, cluster)
	defer s.Close()
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "moving")
	c := store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 100, Window: time.Minute}}
	if v, err := s.CheckKey(ctx, c); err != nil || v.Limit.Remaining != 99 {
		t.Fatalf("before the move: %+v, %v", v, err)
	}
	cluster.MoveSlot(t, recordKey(k.ID), (cluster.Owner(t, recordKey(k.ID))+1)%3)
	var wg sync.WaitGroup
	var remaining sync.Map
	for range 8 {
		wg.Go(func() {
			v, err := s.CheckKey(ctx, c)
			if err != nil || v.Status != store.KeyValid {
				t.Errorf("after the move: %+v, %v", v, err)
				return
			}
			remaining.Store(v.Limit.Remaining, true)
		})
	}
	wg.Wait()
	for r := int64(91); r <= 98; r++ {
		if _, ok := remaining.Load(r); !ok {
			t.Errorf("no call got %d remaining: the counter did not carry on", r)
		}
	}
}
