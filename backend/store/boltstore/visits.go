package boltstore

import (
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Visits to short links are the store's busiest writes (every redirect
// counts one), and every bolt write transaction ends in an fsync, which
// would make the disk's fsync rate the ceiling of redirects. So concurrent
// visits are committed as a group: a visit that finds none being written
// writes its own at once; those that arrive meanwhile queue, and the first
// of them writes them all in the next transaction. No visit waits longer
// than the transaction before its own, and under load one fsync counts
// many visits (BenchmarkVisitLink). bolt's own Batch would hold every call
// for its MaxBatchDelay first.

// visitBatcher is the queue of visits waiting for the transaction on its
// way (writing) to end.
type visitBatcher struct {
	mu      sync.Mutex
	writing bool
	queued  []*visit
}

// visit is one visit to count, and its result.
type visit struct {
	slug string
	at   int64 // Unix ms
	rec  linkRecord
	err  error
	// done receives once: true when the visit was counted by another's
	// transaction (rec, err set), false when it is to write the queue
	done chan bool
}

// countVisit counts v, in its own transaction or a queued group's, and
// returns once it is committed or failed (v.rec, v.err).
func (s *Store) countVisit(v *visit) {
	q := &s.visits
	q.mu.Lock()
	q.queued = append(q.queued, v)
	if q.writing {
		q.mu.Unlock()
		if counted := <-v.done; counted {
			return
		}
		q.mu.Lock() // the writer handed this visit the queue
	}
	q.writing = true
	group := q.queued
	q.queued = nil
	q.mu.Unlock()

	s.writeVisits(group)

	q.mu.Lock()
	var next *visit
	if len(q.queued) > 0 {
		next = q.queued[0] // writes the queue; writing stays true
	} else {
		q.writing = false
	}
	q.mu.Unlock()
	if next != nil {
		next.done <- false
	}
	for _, other := range group {
		if other != v {
			other.done <- true
		}
	}
}

// writeVisits counts group in one transaction. A visit whose link is gone
// fails alone; a failed transaction fails them all, as does a panic in it,
// which is returned rather than raised: the queue's waiters would otherwise
// wait forever, and every later visit behind them.
func (s *Store) writeVisits(group []*visit) {
	err := s.updateRecovered(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLinks)
		for _, v := range group {
			rec, err := getLink(b, v.slug)
			if err != nil {
				v.err = err
				continue
			}
			rec.VisitCount++
			rec.LastVisitedAt = v.at
			if err := putJSON(b, []byte(v.slug), rec); err != nil {
				return err
			}
			v.rec = rec
		}
		return nil
	})
	if err != nil {
		for _, v := range group {
			if v.err == nil {
				v.err = err
			}
		}
	}
}

// updateRecovered is db.Update with a panic in it returned as an error.
func (s *Store) updateRecovered(fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("boltstore: counting visits: panic: %v", p)
		}
	}()
	return s.db.Update(fn)
}
