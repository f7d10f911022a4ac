package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// On a Redis Cluster the hot-path calls go to one pipeliner per primary,
// chosen by the hash slot of the call's first key (a call's keys share
// one: hash tags). One pipeliner on the ClusterClient sent each batch to
// every node its calls touched and waited for all of them, so one hung
// node held up, and failed, every call in flight: with one of three nodes
// stopped, the gateway answered no call at all, for any key. Apart, a hung
// node fails the calls for its own slots, and the others go on
// (TestClusterHungNodeFailsOnlyItsSlots).

// hotPath runs the per-request scripts: a pipeliner, or one per primary.
type hotPath interface {
	run(ctx context.Context, script hotScript, keys []string, args ...any) ([]any, error)
	close()
}

var (
	_ hotPath = (*pipeliner)(nil)
	_ hotPath = (*shardedPipeliner)(nil)
)

// shardedPipeliner sends each call on the pipeliner of the primary that
// serves its slot, as the ClusterClient's slot map has it.
type shardedPipeliner struct {
	cluster *redis.ClusterClient
	timeout time.Duration
	// anyNode is the ClusterClient's own pipeliner, for the calls whose
	// primary the slot map does not name and those a node redirected
	// (MOVED, ASK: a slot migrating, a failover), which the ClusterClient
	// follows, reloading its slot map
	anyNode *pipeliner

	mu sync.Mutex // held to add or drop a node's pipeliner
	// nodes is read on every call, copied on every change
	nodes  atomic.Pointer[map[*redis.Client]*nodePipeliner]
	closed bool
}

// nodePipeliner is the pipeliner of one primary.
type nodePipeliner struct {
	*pipeliner
	lastUsed atomic.Int64 // Unix seconds
}

// staleNode is how long a node's pipeliner may go unused before the next
// new node drops it: a node the cluster no longer has (a primary replaced
// in a failover, a scale-down), whose sender would otherwise stay.
const staleNode = time.Minute

func newShardedPipeliner(cluster *redis.ClusterClient, timeout time.Duration) *shardedPipeliner {
	s := &shardedPipeliner{cluster: cluster, timeout: timeout, anyNode: newPipeliner(cluster, timeout)}
	s.nodes.Store(&map[*redis.Client]*nodePipeliner{})
	return s
}

func (s *shardedPipeliner) run(ctx context.Context, script hotScript, keys []string, args ...any) ([]any, error) {
	node, err := s.cluster.MasterForKey(ctx, keys[0])
	if err != nil {
		return s.anyNode.run(ctx, script, keys, args...)
	}
	p := s.forNode(node)
	if p == nil { // closed
		return nil, errStoreClosed
	}
	res, err := p.run(ctx, script, keys, args...)
	if isRedirect(err) || errors.Is(err, errStoreClosed) {
		// errStoreClosed: dropped as stale by a call for another node
		// just as this one took it (the store closed, anyNode says so)
		return s.anyNode.run(ctx, script, keys, args...)
	}
	return res, err
}

// forNode is node's pipeliner, made on the first call for it.
func (s *shardedPipeliner) forNode(node *redis.Client) *nodePipeliner {
	now := time.Now().Unix()
	if p := (*s.nodes.Load())[node]; p != nil {
		if p.lastUsed.Load() != now { // a store a second, not one a call
			p.lastUsed.Store(now)
		}
		return p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	old := *s.nodes.Load()
	if p := old[node]; p != nil { // made meanwhile
		return p
	}
	nodes := make(map[*redis.Client]*nodePipeliner, len(old)+1)
	for n, p := range old {
		if now-p.lastUsed.Load() > int64(staleNode/time.Second) {
			go p.close() // may wait out a batch on its way to a dead node
			continue
		}
		nodes[n] = p
	}
	p := &nodePipeliner{pipeliner: newPipeliner(node, s.timeout)}
	p.lastUsed.Store(now)
	nodes[node] = p
	s.nodes.Store(&nodes)
	return p
}

func (s *shardedPipeliner) close() {
	s.mu.Lock()
	s.closed = true
	nodes := *s.nodes.Load()
	s.nodes.Store(&map[*redis.Client]*nodePipeliner{})
	s.mu.Unlock()
	s.anyNode.close()
	for _, p := range nodes {
		p.close()
	}
}

// isRedirect reports whether err is a node's answer that another node
// serves the slot (or will: TRYAGAIN during a migration, CLUSTERDOWN), or
// that the node's client was closed (the ClusterClient dropped the node):
// the ClusterClient knows where to go.
func isRedirect(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, redis.ErrClosed) {
		return true
	}
	msg := err.Error()
	for _, prefix := range []string{"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}
