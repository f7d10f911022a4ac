package redistest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hashSlots is how many hash slots a Redis Cluster has.
const hashSlots = 16384

// Cluster is a real Redis Cluster owned by one test: n redis-server nodes
// on free loopback ports, the hash slots split evenly among them, no
// replicas.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts a cluster of n nodes and returns once every node
// serves it (cluster_state:ok, every node known); it stops with the test.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	c := &Cluster{Nodes: make([]*Server, n)}
	for i := range c.Nodes {
		c.Nodes[i] = start(tb, true)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, s := range c.Nodes {
		rdb := s.Client(tb)
		err := rdb.ClusterAddSlotsRange(ctx, i*hashSlots/n, (i+1)*hashSlots/n-1).Err()
		if err == nil && i > 0 {
			// the bus port too: without it MEET assumes the data port + 10000
			first := c.Nodes[0]
			err = rdb.Do(ctx, "cluster", "meet", "127.0.0.1", first.port, first.busPort).Err()
		}
		if err != nil {
			tb.Fatalf("setting up cluster node %s: %v", s.Addr, err)
		}
	}
	want := "cluster_known_nodes:" + strconv.Itoa(n)
	for _, s := range c.Nodes {
		rdb := s.Client(tb)
		for {
			info, err := rdb.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, want) {
				break
			}
			if ctx.Err() != nil {
				tb.Fatalf("cluster node %s not ready within 20s: %q, %v", s.Addr, info, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// URL is the go-redis cluster URL of the cluster: its first node, the
// others as addr options.
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr
	for i, s := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + s.Addr
	}
	return u
}

// FlushAll empties every node (FLUSHALL), and drops their scripts.
func (c *Cluster) FlushAll(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range c.Nodes {
		rdb := s.Client(tb)
		err := rdb.FlushAll(ctx).Err()
		if err == nil {
			err = rdb.ScriptFlush(ctx).Err()
		}
		if err != nil {
			tb.Fatalf("flushing cluster node %s: %v", s.Addr, err)
		}
	}
}

// Owner is the index in Nodes of the node that StartCluster gave key's
// hash slot.
func (c *Cluster) Owner(tb testing.TB, key string) int {
	tb.Helper()
	slot, err := c.Nodes[0].Client(tb).ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		tb.Fatal(err)
	}
	return int(slot) * len(c.Nodes) / hashSlots
}

// MoveSlot moves key's hash slot, and the keys in it, from its node to
// Nodes[to], as a resharding does (MIGRATING, IMPORTING, MIGRATE, then
// the slot assigned on every node). Clients that still send the slot's
// calls to the old node get MOVED.
func (c *Cluster) MoveSlot(tb testing.TB, key string, to int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	from := c.Owner(tb, key)
	src, dst := c.Nodes[from].Client(tb), c.Nodes[to].Client(tb)
	slot, err := src.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		tb.Fatal(err)
	}
	srcID, err := src.Do(ctx, "cluster", "myid").Text()
	if err != nil {
		tb.Fatal(err)
	}
	dstID, err := dst.Do(ctx, "cluster", "myid").Text()
	if err != nil {
		tb.Fatal(err)
	}
	steps := []func() error{
		func() error { return dst.Do(ctx, "cluster", "setslot", slot, "importing", srcID).Err() },
		func() error { return src.Do(ctx, "cluster", "setslot", slot, "migrating", dstID).Err() },
		func() error {
			keys, err := src.ClusterGetKeysInSlot(ctx, int(slot), 1000).Result()
			if err != nil || len(keys) == 0 {
				return err
			}
			args := []any{"migrate", "127.0.0.1", c.Nodes[to].port, "", 0, 5000, "keys"}
			for _, k := range keys {
				args = append(args, k)
			}
			return src.Do(ctx, args...).Err()
		},
	}
	for _, node := range c.Nodes {
		steps = append(steps, func() error { return node.Client(tb).Do(ctx, "cluster", "setslot", slot, "node", dstID).Err() })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			tb.Fatalf("moving slot %d from %s to %s: %v", slot, c.Nodes[from].Addr, c.Nodes[to].Addr, err)
		}
	}
}
