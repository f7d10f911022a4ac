package redisstore

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// The hot-path scripts (one per request) are pipelined across concurrent
// requests: one sender takes every call waiting, writes them to Redis in one
// pipeline and hands each caller its own reply, then takes the calls that
// queued meanwhile. One write and one read then carry every request in
// flight, on the gateway's side and on Redis's, instead of a pair of
// syscalls and wake-ups per request. A call made while no other is in
// flight goes out directly from its own goroutine: handing it to the sender
// would only add latency (two wake-ups and a pipeline's allocations). Each
// call remains its own EVALSHA, so nothing about its atomicity changes.
//
// One sender, not several: several send smaller batches, so Redis and the
// gateway each read and write more of them. In the load benchmark, four
// senders and two direct calls cost Redis 29–45 µs of CPU per request where
// one sender costs 20–32 (one key at 64 connections; README, Performance).
// A call that arrives while a batch is on the wire waits for its reply
// first: one round trip more, less on the same host than what it saves.
//
// The sender and the direct call use connections of their own where the
// client allows it (a plain *redis.Client), not the client's pool: a pooled
// connection costs a health-check syscall on every checkout. Such a line
// goes back to the pool after an idle second, so that the next call takes
// a health-checked connection (one that Redis or the network closed while
// idle is not used); after an error it is dropped (see line.done), and
// the calls that found it closed are sent once more (see brokenConn).

// maxBatch bounds one pipeline, so one batch never holds many callers
// behind a large write.
const maxBatch = 128

// errStoreClosed answers calls made after Close, and the calls Close
// found queued: none was sent, so a cluster's store may send it through
// another pipeliner (shardedPipeliner.run).
var errStoreClosed = errors.New("redis store closed")

// errClosedOnItsWay answers a call the sender had taken when Close came,
// which Redis may have run: a store error, never sent again elsewhere.
var errClosedOnItsWay = errors.New("redis store closed with the call on its way")

// noRetry is a hot-path command that go-redis does not retry itself, on a
// line's own connection: it resends a whole pipeline on the same
// connection when the first reply is an error it deems passing (TRYAGAIN
// in a resharding cluster, LOADING, MASTERDOWN), which ran every other
// call of the batch twice; and after a connection closed it sleeps 10 to
// 30 ms before it reports the connection bad without resending. The
// pipeliner sends such calls once more itself (brokenConn), at once.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

type scriptCall struct {
	ctx context.Context // the caller's: once it ends, the call is not sent
	cmd *redis.Cmd
	// cmder is what a pipeline sends: cmd, or on a line's own connection
	// cmd as noRetry (a pointer into the call: no allocation of its own)
	cmder   redis.Cmder
	noRetry noRetry
	script  *redis.Script // to fall back to EVAL after NOSCRIPT
	keys    []string
	// state is callQueued until the sender takes the call (callTaken) or
	// its caller, the pipeliner closing, gives it up (callAbandoned):
	// whichever comes first says whether it may be sent elsewhere
	state atomic.Int32
	// wireErr is the error of the call's first attempt when its
	// connection failed under it (brokenConn): the call may have run, and
	// a resend that finds the client closed answers with this instead
	wireErr error
	// deadline is when the caller gives up: the store timeout from when
	// it was made, or its context's deadline if that comes first
	deadline time.Time
	done     chan struct{}
}

// waitTimers are the pipelined callers' timers, reused: one per call would
// cost two allocations on the hot path.
var waitTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

type pipeliner struct {
	client  redis.UniversalClient
	timeout time.Duration
	// ownLines: the client gives lines connections of their own (a plain
	// *redis.Client), where go-redis's own retries are off (noRetry)
	ownLines bool
	// inFlight counts the calls whose callers are waiting: only the one
	// that finds none goes out directly
	inFlight atomic.Int64
	// direct holds the direct calls' line while no call uses it
	direct chan *line
	calls  chan *scriptCall
	// stopped is cancelled by close: it stops the sender and ends its
	// pipeline on its way (closing the client ends its reads, not a dial)
	stopped  context.Context
	stopSend context.CancelFunc
	sender   sync.WaitGroup
	closed   sync.Once // a second close finds nothing left to do
}

// line is a connection of the pipeliner's own: nil until first used, after
// an error or an idle while, or when the client is not a plain
// *redis.Client.
type line struct {
	conn *redis.Conn
	// the sender's pipeline on conn (on the client while conn is nil),
	// kept while conn is: Exec leaves it empty, and a new one costs four
	// allocations a batch
	pipe redis.Pipeliner
	used time.Time
}

// lineIdle is how long a line may sit unused before it goes back to the
// client's pool.
const lineIdle = time.Second

// take returns the line's connection, taking one from the client's pool
// (health-checked) if it has none or sat idle (nil when the client cannot
// give one).
func (l *line) take(client redis.UniversalClient) *redis.Conn {
	if l.conn != nil && time.Since(l.used) > lineIdle {
		l.close() // back to the pool
	}
	if c, ok := client.(*redis.Client); ok && l.conn == nil {
		l.conn = c.Conn()
	}
	return l.conn
}

// pipeline returns a pipeline on the line's connection, taken as take
// does, or on the client when it cannot give one.
func (l *line) pipeline(client redis.UniversalClient) redis.Pipeliner {
	if conn := l.take(client); l.pipe == nil {
		if conn != nil {
			l.pipe = conn.Pipeline()
		} else {
			l.pipe = client.Pipeline()
		}
	}
	return l.pipe
}

// done records a use that ended with err, and drops the line's connection
// after any error: the connection may hold an unread reply or be broken;
// or, on READONLY, the server at the other end is a replica now (a failover
// behind the address: a DNS name or a proxy that follows the primary),
// where a new connection reaches the new primary, and go-redis leaves the
// old one in a bad state, failing every later call on it. Errors are rare:
// a line dropped after Redis's other answers (NOSCRIPT after a restart)
// only costs the next call a pooled connection.
func (l *line) done(err error) {
	if l.conn != nil && err != nil {
		l.close()
	}
	l.used = time.Now()
}

func (l *line) close() {
	if l.conn != nil {
		_ = l.conn.Close()
		l.conn = nil
	}
	l.pipe = nil
}

func newPipeliner(client redis.UniversalClient, timeout time.Duration) *pipeliner {
	_, own := client.(*redis.Client)
	p := &pipeliner{
		client:   client,
		timeout:  timeout,
		ownLines: own,
		direct:   make(chan *line, 1),
		calls:    make(chan *scriptCall, 4*maxBatch),
	}
	p.stopped, p.stopSend = context.WithCancel(context.Background())
	p.direct <- new(line)
	p.sender.Add(1)
	go p.send()
	return p
}

// run evaluates script with keys and args, directly when no other call is
// in flight, else as part of the sender's next pipeline, and returns its
// reply. A pipelined call gives up when ctx ends or the store timeout
// passes, whichever comes first, however long the batch it is in takes; if
// it is still queued then, it is not sent (once on the wire it may be
// counted, but nobody reads its reply).
func (p *pipeliner) run(ctx context.Context, script hotScript, keys []string, args ...any) ([]any, error) {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", script.sha, len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	defer p.inFlight.Add(-1)
	if p.inFlight.Add(1) == 1 {
		select {
		case l := <-p.direct:
			defer func() { p.direct <- l }() // before inFlight drops
			return p.runDirect(ctx, l, script.Script, keys, cmdArgs)
		default: // closed: close took the line
		}
	}
	c := p.newCall(ctx, script.Script, keys, cmdArgs)
	timer := waitTimers.Get().(*time.Timer)
	timer.Reset(time.Until(c.deadline))
	defer func() {
		timer.Stop()
		waitTimers.Put(timer)
	}()
	select {
	case p.calls <- c:
	case <-p.stopped.Done():
		return nil, errStoreClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, context.DeadlineExceeded
	}
	stopped := p.stopped.Done()
	for {
		select {
		case <-c.done:
			return c.cmd.Slice()
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, context.DeadlineExceeded
		case <-stopped:
			if c.state.CompareAndSwap(callQueued, callAbandoned) {
				return nil, errStoreClosed // never sent
			}
			// taken by the sender as close came: its batch ends soon
			// (close ends it), and says what became of the call
			stopped = nil
		}
	}
}

// The states of a scriptCall.
const (
	callQueued int32 = iota
	callTaken
	callAbandoned
)

// newCall is a call for the sender, with the store timeout from now.
func (p *pipeliner) newCall(ctx context.Context, script *redis.Script, keys []string, cmdArgs []any) *scriptCall {
	c := &scriptCall{
		ctx:      ctx,
		cmd:      redis.NewCmd(ctx, cmdArgs...),
		script:   script,
		keys:     keys,
		deadline: time.Now().Add(p.timeout),
		done:     make(chan struct{}),
	}
	if d, ok := ctx.Deadline(); ok && d.Before(c.deadline) {
		c.deadline = d
	}
	c.cmder = c.cmd
	if p.ownLines {
		c.noRetry.Cmd = c.cmd
		c.cmder = &c.noRetry
	}
	return c
}

// onItsWay is the error of a call that ended with err: when its first
// attempt's connection failed under it (wireErr) and the resend found the
// client closed, the first error (Redis may have run the call, which
// redis.ErrClosed would send elsewhere: shardedPipeliner.run); when close
// ended its batch (closing; context.Canceled), errClosedOnItsWay, not
// the cancellation that says a client left.
func onItsWay(err, wireErr error, closing bool) error {
	switch {
	case wireErr != nil && errors.Is(err, redis.ErrClosed):
		return wireErr
	case closing && errors.Is(err, context.Canceled):
		return errClosedOnItsWay
	}
	return err
}

// runDirect sends one call on l, within the store timeout (withTimeout).
func (p *pipeliner) runDirect(ctx context.Context, l *line, script *redis.Script, keys []string, cmdArgs []any) ([]any, error) {
	ctx, cancel := withTimeout(ctx, p.timeout)
	defer cancel()
	cmd, own := p.processOn(ctx, l, cmdArgs)
	if wireErr := cmd.Err(); own && brokenConn(wireErr) && ctx.Err() == nil {
		cmd, _ = p.processOn(ctx, l, cmdArgs) // on a new connection (see brokenConn)
		cmd.SetErr(onItsWay(cmd.Err(), wireErr, false))
	}
	if isNoScript(cmd.Err()) {
		return script.Eval(ctx, p.client, keys, scriptArgs(cmdArgs, keys)...).Slice()
	}
	return cmd.Slice()
}

// processOn sends one command on l's connection, or through the client
// when l has none (own false: go-redis then retries a broken connection
// itself).
func (p *pipeliner) processOn(ctx context.Context, l *line, cmdArgs []any) (cmd *redis.Cmd, own bool) {
	cmd = redis.NewCmd(ctx, cmdArgs...)
	if conn := l.take(p.client); conn != nil {
		_ = conn.Process(ctx, noRetry{cmd})
		own = true
	} else {
		_ = p.client.Process(ctx, cmd)
	}
	l.done(cmd.Err())
	return cmd, own
}

// brokenConn reports whether err says a line's connection was closed under
// it (Redis restarted, or closed it; or a proxy in front of it did, past
// an age), not that Redis answered an error or did not answer in time.
// line.done has dropped such a connection, and its calls are sent once
// more, on a new one: go-redis does the same for its pool's connections,
// but on a connection of one's own it only reports the error, and the
// calls that find a line's connection closed would fail while Redis is
// there. As with go-redis's retries, a call that reached Redis before the
// connection closed may be counted twice.
func brokenConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// withTimeout bounds a call by timeout unless ctx has a deadline already.
// go-redis bounds each dial, read and write by it, but tries a dial five
// times and then retries the command: to an unreachable Redis one call
// would take several timeouts. (The sender's pipelines have their own
// deadline; see exec.)
func withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}

// send is the sender: it waits for a call, takes every call queued behind
// it (up to maxBatch) and sends them as one pipeline on its own line.
func (p *pipeliner) send() {
	defer p.sender.Done()
	var l line // its connection closes with the client (see close)
	batch := make([]*scriptCall, 0, maxBatch)
	cmds := make([]redis.Cmder, 0, maxBatch)
	for {
		select {
		case <-p.stopped.Done():
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
		p.exec(&l, batch, cmds)
		clear(batch) // let the finished calls go
	}
}

// exec sends one batch on l and wakes its callers; cmds has room for the
// batch's commands. The calls whose callers gave up while queued are not
// sent (Redis would count requests that were answered without it). The
// others go out with the latest of their deadlines: each caller stops
// waiting at its own (see run), and a call that queued long behind a slow
// batch does not take down those that queued after it, which have time
// left (with the oldest call's deadline, every call queued behind a batch
// failed once a round trip took more than half the timeout).
func (p *pipeliner) exec(l *line, batch []*scriptCall, cmds []redis.Cmder) {
	now := time.Now()
	var deadline time.Time
	cmds = cmds[:0]
	for _, c := range batch {
		if !c.state.CompareAndSwap(callQueued, callTaken) { // its caller gave it up as close came
			c.cmd.SetErr(errStoreClosed)
			continue
		}
		if err := c.ctx.Err(); err != nil || !now.Before(c.deadline) {
			if err == nil {
				err = context.DeadlineExceeded
			}
			c.cmd.SetErr(err)
			continue
		}
		cmds = append(cmds, c.cmder)
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(p.stopped, deadline)
	defer cancel()
	var err error
	if len(cmds) > 0 {
		var own bool
		if own, err = p.execOn(ctx, l, cmds); own && err != nil {
			// the calls the line's connection failed (see brokenConn) go
			// once more on a new one, but for those whose callers gave up
			now, cmds = time.Now(), cmds[:0]
			for _, c := range batch {
				switch {
				case c.cmd.Val() != nil:
					c.cmd.SetErr(nil) // answered: the reply stands (keepReplies)
				case !unanswered(c.cmd):
				case c.ctx.Err() == nil && now.Before(c.deadline):
					c.wireErr = c.cmd.Err()
					c.cmd.SetErr(nil)
					cmds = append(cmds, c.cmder)
				case c.cmd.Err() == nil: // not sent
					c.cmd.SetErr(err)
				}
			}
			if len(cmds) > 0 {
				_, err = p.execOn(ctx, l, cmds)
				keepReplies(batch)
			}
		}
	}

	// After a Redis restart or SCRIPT FLUSH the scripts are gone: load them
	// with EVAL, one call at a time (rare, and Redis caches them again),
	// but for the calls whose callers gave up meanwhile: Redis would count
	// requests nobody is told of.
	closing := p.stopped.Err() != nil
	for _, c := range batch {
		if err != nil && c.cmd.Err() == nil && c.cmd.Val() == nil { // not sent
			c.cmd.SetErr(err)
		}
		if c.wireErr != nil || closing {
			c.cmd.SetErr(onItsWay(c.cmd.Err(), c.wireErr, closing && c.ctx.Err() == nil))
		}
		if isNoScript(c.cmd.Err()) {
			if err := c.ctx.Err(); err != nil || !time.Now().Before(c.deadline) {
				c.cmd.SetErr(cmp.Or(err, context.DeadlineExceeded))
			} else {
				res, err := c.script.Eval(ctx, p.client, c.keys, scriptArgs(c.cmd.Args(), c.keys)...).Result()
				c.cmd.SetVal(res)
				c.cmd.SetErr(err)
			}
		}
		close(c.done)
	}
}

// execOn sends cmds as one pipeline on l's connection, or through the
// client when l has none (own false), and returns the pipeline's error: the
// first of its commands', or the connection's. It leaves cmds cleared.
func (p *pipeliner) execOn(ctx context.Context, l *line, cmds []redis.Cmder) (own bool, err error) {
	pipe := l.pipeline(p.client)
	own = l.conn != nil
	_ = pipe.BatchProcess(ctx, cmds...) // one allocation, not one per doubling
	clear(cmds)                         // the pipeline has them; let them go with their calls
	// Every command carries its own error, but one go-redis never sent: it
	// leaves those without a reply or an error when the connection was in a
	// bad state.
	_, err = pipe.Exec(ctx)
	l.done(err)
	return own, err
}

// keepReplies clears the error of every call of batch that has a reply:
// one answered before its connection failed, which go-redis reports on it
// too. The reply stands (Redis counted it).
func keepReplies(batch []*scriptCall) {
	for _, c := range batch {
		if c.cmd.Val() != nil {
			c.cmd.SetErr(nil)
		}
	}
}

// unanswered reports whether a pipelined command without a reply got none
// because the connection failed: before the reply came, or before it was
// sent.
func unanswered(cmd *redis.Cmd) bool {
	err := cmd.Err()
	return err == nil || brokenConn(err)
}

// scriptArgs is the ARGV part of an EVALSHA's arguments with keys: run
// keeps no copy of its own, so that its variadic args need not escape.
func scriptArgs(cmdArgs []any, keys []string) []any {
	return cmdArgs[3+len(keys):]
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// close stops the sender, ending its pipeline on its way (a dial to an
// unreachable Redis included), and takes the direct line, so that no call
// uses it again; calls still queued get errStoreClosed. Store.Close closes
// the client first, and with it the lines' connections: that ends a call
// on its way to a hung Redis at once, and a line handed back to the closed
// pool afterwards would only have go-redis log it.
func (p *pipeliner) close() { p.closed.Do(p.closeOnce) }

func (p *pipeliner) closeOnce() {
	p.stopSend()
	p.sender.Wait()
	select {
	case <-p.direct:
	default:
	}
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
