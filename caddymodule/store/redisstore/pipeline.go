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

// The hot-path scripts (one per request) are pipelined across concurrent
// requests under load: a few senders each take whatever calls are waiting,
// write them to Redis in one pipeline and hand every caller its own reply.
// One write and one read then carry many requests, on the gateway's side
// and on Redis's, instead of a pair of syscalls and a pooled connection per
// request. While few calls are in flight, a call goes out directly from its
// own goroutine: handing it to a sender would only add latency. Each call
// remains its own EVALSHA, so nothing about its atomicity changes.

const (
	// directCalls is how many calls may go out directly at once; a call
	// made while that many are in flight is pipelined.
	directCalls = 2

	// pipelineSenders is how many batches can be in flight at once. A new
	// call waits only while all of them are busy, which is exactly when
	// batching pays: it then leaves with everything queued behind it.
	pipelineSenders = 4
	// maxBatch bounds one pipeline, so one batch never holds many callers
	// behind a large write.
	maxBatch = 128
)

// errStoreClosed answers calls made after Close.
var errStoreClosed = errors.New("redis store closed")

type scriptCall struct {
	cmd      *redis.Cmd
	script   *redis.Script // to fall back to EVAL after NOSCRIPT
	keys     []string
	args     []any
	enqueued time.Time
	done     chan struct{}
}

type pipeliner struct {
	inflight atomic.Int32 // calls sent directly, not yet answered
	client   redis.UniversalClient
	timeout  time.Duration
	calls    chan *scriptCall
	stop     chan struct{}
	senders  sync.WaitGroup
}

func newPipeliner(client redis.UniversalClient, timeout time.Duration) *pipeliner {
	p := &pipeliner{
		client:  client,
		timeout: timeout,
		calls:   make(chan *scriptCall, 4*maxBatch),
		stop:    make(chan struct{}),
	}
	p.senders.Add(pipelineSenders)
	for range pipelineSenders {
		go p.send()
	}
	return p
}

// run evaluates script with keys and args, directly or as part of the next
// pipeline, and returns its reply. A pipelined call gives up when ctx ends;
// it is then still sent (it may already be on the wire) but nobody reads
// its reply.
func (p *pipeliner) run(ctx context.Context, script *redis.Script, keys []string, args ...any) ([]any, error) {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", script.Hash(), len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	if p.inflight.Add(1) <= directCalls {
		// bounded by the client's dial, read, write and pool timeouts
		defer p.inflight.Add(-1)
		cmd := redis.NewCmd(ctx, cmdArgs...)
		_ = p.client.Process(ctx, cmd)
		if isNoScript(cmd.Err()) {
			return script.Eval(ctx, p.client, keys, args...).Slice()
		}
		return cmd.Slice()
	}
	p.inflight.Add(-1)
	c := &scriptCall{
		cmd:      redis.NewCmd(ctx, cmdArgs...),
		script:   script,
		keys:     keys,
		args:     args,
		enqueued: time.Now(),
		done:     make(chan struct{}),
	}
	select {
	case p.calls <- c:
	case <-p.stop:
		return nil, errStoreClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-c.done:
		return c.cmd.Slice()
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.stop:
		return nil, errStoreClosed
	}
}

// send is one sender: it waits for a call, takes every call queued behind
// it (up to maxBatch) and sends them as one pipeline.
//
// A sender keeps one connection of its own where the client allows it (a
// plain *redis.Client): a pooled one costs a health-check syscall on every
// checkout. After an error the connection is dropped and the next batch
// takes a fresh one.
func (p *pipeliner) send() {
	defer p.senders.Done()
	var conn *redis.Conn // nil: none yet, or a cluster/failover client
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	batch := make([]*scriptCall, 0, maxBatch)
	for {
		select {
		case <-p.stop:
			return
		case c := <-p.calls:
			batch = append(batch[:0], c)
		}
	collect:
		for len(batch) < maxBatch {
			select {
			case c := <-p.calls:
				batch = append(batch, c)
			default:
				break collect
			}
		}
		conn = p.exec(conn, batch)
		clear(batch) // let the finished calls go
	}
}

// exec sends one batch and wakes its callers. Its deadline is the oldest
// call's enqueue time plus the store timeout, so a call never waits for
// Redis much longer than the timeout, however long it queued.
//
// It sends on conn when there is one and returns the connection for the
// next batch.
func (p *pipeliner) exec(conn *redis.Conn, batch []*scriptCall) *redis.Conn {
	ctx, cancel := context.WithDeadline(context.Background(), batch[0].enqueued.Add(p.timeout))
	defer cancel()
	if c, ok := p.client.(*redis.Client); ok && conn == nil {
		conn = c.Conn()
	}
	pipe := p.client.Pipeline()
	if conn != nil {
		pipe = conn.Pipeline()
	}
	for _, c := range batch {
		_ = pipe.Process(ctx, c.cmd)
	}
	_, err := pipe.Exec(ctx) // every command carries its own error
	if err != nil && conn != nil && !isNoScript(err) {
		// it may hold unread replies, or be broken: start afresh
		_ = conn.Close()
		conn = nil
	}

	// After a Redis restart or SCRIPT FLUSH the scripts are gone: load them
	// with EVAL, one call at a time (rare, and Redis caches them again).
	for _, c := range batch {
		if isNoScript(c.cmd.Err()) {
			res, err := c.script.Eval(ctx, p.client, c.keys, c.args...).Result()
			c.cmd.SetVal(res)
			c.cmd.SetErr(err)
		}
		close(c.done)
	}
	return conn
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// close stops the senders; calls still queued get errStoreClosed.
func (p *pipeliner) close() {
	close(p.stop)
	p.senders.Wait()
	for {
		select {
		case c := <-p.calls:
			c.cmd.SetErr(errStoreClosed)
			close(c.done)
		default:
			return
		}
	}
}
