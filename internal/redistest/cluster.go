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
