package keygate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// A key's lease (lease.go) may last up to a minute (store.MaxLease), far
// longer than a revoked key may keep working. What makes that safe is the
// epoch: a number in the store that every change to any key moves. While
// a loaded config has handlers with leases, or fails open
// (on_store_error open), the shared store polls it a few times a second;
// a key's lease is used only while the epoch is the one it was granted
// under and was confirmed within the last second. So a disabled, deleted
// or rotated key stops within about one poll, and within a second at
// worst (a store that stops answering stops every key's lease). Failing
// open, a key validated before the last change learned of, through any
// gateway, does not pass an outage (changedAt).

const (
	epochPollEvery = 250 * time.Millisecond
	epochFresh     = time.Second
)

type epochWatch struct {
	mu    sync.Mutex
	users int                // handlers watching it (acquire, release)
	stop  context.CancelFunc // ends the polling running, and a poll's dial or wait for a connection; nil: none
	done  chan struct{}      // closed when the polling running has ended
	epoch atomic.Int64
	// when the last successful read was asked, an instant (the monotonic
	// clock: a wall clock stepped back would keep a stale epoch fresh);
	// 0: never
	confirmed atomic.Int64
	// when this gateway last learned that some key changed (wall clock,
	// Unix nanoseconds; 0: never): a poll that read a new epoch, or a
	// change made through this process's admin API. A key validated
	// before it may be the one that changed, so on_store_error open does
	// not let it through an outage (Handler.storeFailed).
	changedAt atomic.Int64
}

// noteChange records that a key changed, as learned at.
func (w *epochWatch) noteChange(at time.Time) {
	for {
		old := w.changedAt.Load()
		if at.UnixNano() <= old || w.changedAt.CompareAndSwap(old, at.UnixNano()) {
			return
		}
	}
}

// acquire is a handler beginning to watch the epoch: the first starts
// polling s, with timeout bounding each read.
func (w *epochWatch) acquire(s store.Store, timeout time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.users++
	if w.stop != nil {
		return
	}
	// while nobody polled, keys may have changed through other gateways:
	// keys validated until now do not fail open (a reload from a config
	// that polled nothing to one that fails open keeps the key cache)
	w.noteChange(time.Now())
	var ctx context.Context
	ctx, w.stop = context.WithCancel(context.Background())
	w.done = make(chan struct{})
	go w.run(ctx, w.done, s, timeout)
}

// release is a watching handler let go of (its config unloaded): the last
// stops the polling, so that a store no config watches is not read four
// times a second for as long as it stays open. It does not wait
// for a poll on its way (a hung store would hold the config reload for
// the whole timeout): that poll ends on its own and stores nothing.
func (w *epochWatch) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.users--; w.users > 0 || w.stop == nil {
		return
	}
	w.stop()
	w.stop, w.done = nil, nil
	// unconfirmed from now on: a poller started later confirms afresh
	w.confirmed.Store(0)
}

func (w *epochWatch) run(ctx context.Context, done chan struct{}, s store.Store, timeout time.Duration) {
	defer close(done)
	tick := time.NewTicker(epochPollEvery)
	defer tick.Stop()
	read := false // this run's first epoch read
	for {
		if w.poll(ctx, s, timeout) && !read {
			// a change between acquire's note and this read would pass
			// for the epoch as it was
			read = true
			w.noteChange(time.Now())
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// poll reads the epoch once, and says whether it did.
func (w *epochWatch) poll(ctx context.Context, s store.Store, timeout time.Duration) bool {
	asked := time.Now()
	read, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	e, err := s.Epoch(read)
	if err != nil || ctx.Err() != nil {
		// leases of keys stop once the last confirmation is too old; a
		// poll whose polling was stopped on its way confirms nothing
		return false
	}
	if w.confirmed.Load() != 0 && e != w.epoch.Load() {
		w.noteChange(time.Now())
	}
	w.epoch.Store(e)
	w.confirmed.Store(max(int64(instantOf(asked)), 1))
	return true
}

// current returns the epoch last read and whether it was confirmed
// recently enough for a key's lease to be used.
func (w *epochWatch) current(now time.Time) (epoch int64, fresh bool) {
	// The confirmation first: poll stores the epoch before it, so this
	// epoch is the confirmed one or a later one, never an older epoch
	// with a newer confirmation (read the other way round, a poll between
	// the two loads could pair them).
	confirmed := w.confirmed.Load()
	return w.epoch.Load(), confirmed != 0 && instantOf(now).sub(instant(confirmed)) < epochFresh
}

// close stops polling, if it runs, and waits for a poll on its way: call
// it after closing the store, which ends that poll at once (a poll of a
// hung store would otherwise hold the config reload that lets go of it
// for the whole timeout; cancelling its context only ends its waits for a
// connection or a dial, not a read).
func (w *epochWatch) close() {
	w.mu.Lock()
	stop, done := w.stop, w.done
	w.stop, w.done = nil, nil
	w.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}
