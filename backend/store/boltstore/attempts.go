package boltstore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The passcode attempts held on a secret are one record in the attempts
// bucket, under the secret's id: the end of the window and the tokens of
// the reservations held. Reserving and releasing are each one write
// transaction, so none is lost or counted twice. A record whose window has
// ended is read as none (counting starts afresh); the janitor deletes it.

// errNoChange ends a write transaction that has nothing to write (a
// refused reservation, a release of no reservation) without committing
// it: no fsync, so a flood of refused guesses keeps no one waiting long.
var errNoChange = errors.New("boltstore: no change")

// attemptsRecord is the stored form of a secret's passcode attempts.
type attemptsRecord struct {
	Until int64    `json:"until"` // Unix ms, the end of the window
	Held  []string `json:"held"`  // tokens of the reservations held
}

// liveAttempts decodes the stored record v as it counts at now: the zero
// record when there is none, its window has ended or it does not decode.
func liveAttempts(v []byte, now time.Time) attemptsRecord {
	var rec attemptsRecord
	if v == nil || json.Unmarshal(v, &rec) != nil || !now.Before(fromMS(rec.Until)) {
		return attemptsRecord{}
	}
	return rec
}

// attemptsExpired reports whether the stored record v counts nothing any
// more at now.
func attemptsExpired(v []byte, now time.Time) bool {
	return liveAttempts(v, now).Until == 0
}

// ReservePasscodeAttempt implements store.SecretStore.
func (s *Store) ReservePasscodeAttempt(ctx context.Context, id string, limit int, window time.Duration) (string, time.Time, error) {
	if err := ctxErr(ctx); err != nil {
		return "", time.Time{}, err
	}
	now := s.cfg.Now()
	token := rand.Text()
	var rec attemptsRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, key := tx.Bucket(bucketAttempts), []byte(id)
		rec = liveAttempts(b.Get(key), now)
		if rec.Until == 0 { // no window runs: this reservation begins one
			rec.Until = ms(now.Add(window))
		}
		if len(rec.Held) >= limit {
			token = ""
			return errNoChange
		}
		rec.Held = append(rec.Held, token)
		return putJSON(b, key, rec)
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return "", time.Time{}, fmt.Errorf("boltstore: reserving passcode attempt: %w", err)
	}
	return token, fromMS(rec.Until), nil
}

// ReleasePasscodeAttempt implements store.SecretStore. The record goes
// with its last reservation, as Redis deletes an empty hash.
func (s *Store) ReleasePasscodeAttempt(ctx context.Context, id, token string) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	now := s.cfg.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, key := tx.Bucket(bucketAttempts), []byte(id)
		rec := liveAttempts(b.Get(key), now)
		i := slices.Index(rec.Held, token)
		if i < 0 {
			return errNoChange
		}
		if rec.Held = slices.Delete(rec.Held, i, i+1); len(rec.Held) == 0 {
			return b.Delete(key)
		}
		return putJSON(b, key, rec)
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return fmt.Errorf("boltstore: releasing passcode attempt: %w", err)
	}
	return nil
}
