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
// handlers with leases exist, the shared store polls it a few times a
// second; a key's lease is used only while the epoch is the one it was
// granted under and was confirmed within the last second. So a disabled,
// deleted or rotated key stops within about one poll, and within a second
// at worst (a store that stops answering stops every key's lease).

const (
	epochPollEvery = 250 * time.Millisecond
	epochFresh     = time.Second
)

type epochWatch struct {
	startOnce sync.Once
	started   atomic.Bool
	stop      context.CancelFunc // ends the polling, and a poll's dial or wait for a connection
	done      chan struct{}
	epoch     atomic.Int64
	// when the last successful read was asked, an instant (the monotonic
	// clock: a wall clock stepped back would keep a stale epoch fresh);
	// 0: never
	confirmed atomic.Int64
}

// start begins polling s, once, with timeout bounding each read.
func (w *epochWatch) start(s store.Store, timeout time.Duration) {
	w.startOnce.Do(func() {
		var ctx context.Context
		ctx, w.stop = context.WithCancel(context.Background())
		w.done = make(chan struct{})
		w.started.Store(true)
		go w.run(ctx, s, timeout)
	})
}

func (w *epochWatch) run(ctx context.Context, s store.Store, timeout time.Duration) {
	defer close(w.done)
	tick := time.NewTicker(epochPollEvery)
	defer tick.Stop()
	for {
		w.poll(ctx, s, timeout)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (w *epochWatch) poll(ctx context.Context, s store.Store, timeout time.Duration) {
	asked := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	e, err := s.Epoch(ctx)
	if err != nil {
		return // leases of keys stop once the last confirmation is too old
	}
	w.epoch.Store(e)
	w.confirmed.Store(max(int64(instantOf(asked)), 1))
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

// close stops polling, if it ever started, and waits for a poll on its
// way: call it after closing the store, which ends that poll at once (a
// poll of a hung store would otherwise hold the config reload that lets go
// of it for the whole timeout; cancelling its context only ends its waits
// for a connection or a dial, not a read).
func (w *epochWatch) close() {
	if w.started.Load() {
		w.stop()
		<-w.done
	}
}
