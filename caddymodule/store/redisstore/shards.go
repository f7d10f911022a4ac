package redisstore

import (
	"context"
	"errors"
	"maps"
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

	mu sync.Mutex // held to add a node's pipeliner
	// nodes, by address, is read on every call and copied on every change
	nodes  atomic.Pointer[map[string]nodePipeliner]
	closed bool
}

// nodePipeliner is the pipeliner of one primary's client. The
// ClusterClient closes the client of a node that left the cluster, and
// makes a new one if a node comes back at its address: the pipeliner of
// the old client is then replaced (and closed; its connections went with
// the client). One of a node gone for good stays until the store closes:
// a sender goroutine, idle, whose connections closed with its client.
type nodePipeliner struct {
	client *redis.Client
	*pipeliner
}

func newShardedPipeliner(cluster *redis.ClusterClient, timeout time.Duration) *shardedPipeliner {
	s := &shardedPipeliner{cluster: cluster, timeout: timeout, anyNode: newPipeliner(cluster, timeout)}
	s.nodes.Store(&map[string]nodePipeliner{})
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
		// errStoreClosed: the node's client was replaced, and its
		// pipeliner closed, as this call took it (the store closed, and
		// anyNode says so)
		return s.anyNode.run(ctx, script, keys, args...)
	}
	return res, err
}

// forNode is the pipeliner of node, a primary's client, made on the first
// call for it; nil once closed.
func (s *shardedPipeliner) forNode(node *redis.Client) *pipeliner {
	addr := node.Options().Addr
	if p := (*s.nodes.Load())[addr]; p.client == node {
		return p.pipeliner
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	old := *s.nodes.Load()
	p := old[addr]
	if p.client == node { // made meanwhile
		return p.pipeliner
	}
	if p.pipeliner != nil {
		go p.close() // the old client's, closed: its calls failed or redirected
	}
	nodes := maps.Clone(old)
	nodes[addr] = nodePipeliner{node, newPipeliner(node, s.timeout)}
	s.nodes.Store(&nodes)
	return nodes[addr].pipeliner
}

func (s *shardedPipeliner) close() {
	s.mu.Lock()
	s.closed = true
	nodes := *s.nodes.Load()
	s.nodes.Store(&map[string]nodePipeliner{})
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
