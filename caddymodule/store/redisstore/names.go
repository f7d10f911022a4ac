package redisstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/store"
)

// The name index (namesKey) maps each key's name to an entry: its id and,
// after a colon, the token of the change that claimed the name (an entry
// without one, as older versions wrote, is just the id). A record and
// its name entry live in different hash slots, so no script can change
// both at once: a change writes one, then the other, and can be cut off
// between them (an outage, a failed command). So the index is read with
// its records, and mended as it is read:
//
//   - an entry whose record is gone (a deletion, or a creation undone, that
//     did not get to the entry; or a deletion that a rename raced) names
//     nothing: lookups do not find it, and a creation or a rename may take
//     the name over;
//   - an entry whose record is under another name (a rename that did not
//     get to release the old one, or one in progress) names nothing either:
//     lookups do not find it, and listings show the key once, under its
//     record's name;
//   - every entry is removed or replaced only if it still holds what it
//     was read with, token and all (a script on the index alone), so
//     mending one never undoes another change's. The token is what tells
//     two changes of one key apart: a rename of a key back to the name it
//     is leaving, made while the first rename is still to release that
//     name, claims it afresh, so the first one's release leaves it alone
//     (with the id alone, it removed the name the key's record now holds).
//
// A creation writes the record before its name entry, so an entry whose
// record is missing is never one in the making.

// entryID is the key id a name entry holds.
func entryID(entry string) string {
	id, _, _ := strings.Cut(entry, ":")
	return id
}

// newEntry is a name entry for id, claimed by a change of its own.
func newEntry(id string) string {
	return id + ":" + strconv.FormatUint(rand.Uint64(), 36)
}

// releaseNameScript removes a name's entry if it is still the one read.
// KEYS[1] the name index; ARGV[1] name, ARGV[2] entry. Returns 1 if removed.
var releaseNameScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
`)

// replaceNameScript replaces a name's entry if it is still the one read.
// KEYS[1] the name index; ARGV[1] name, ARGV[2] old entry, ARGV[3] new one.
// Returns 1 if replaced.
var replaceNameScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
`)

// claimName reserves name for id and returns the entry that holds it, the
// claim's own: store.ErrNameTaken if another key's record holds it (or is
// being renamed to it). An entry whose record is gone is taken over; one of
// id's (a change of the same key under way, or one cut off before it
// released it) is claimed afresh, so that the other change's release of it
// leaves it in place.
func (s *Store) claimName(ctx context.Context, name, id string) (string, error) {
	entry := newEntry(id)
	for range 3 {
		ok, err := s.client.HSetNX(ctx, namesKey, name, entry).Result()
		if err != nil {
			return "", err
		}
		if ok {
			return entry, nil
		}
		holder, err := s.client.HGet(ctx, namesKey, name).Result()
		if errors.Is(err, redis.Nil) {
			continue // released meanwhile: claim it again
		}
		if err != nil {
			return "", err
		}
		if holderID := entryID(holder); holderID != id {
			n, err := s.client.Exists(ctx, recordKey(holderID)).Result()
			if err != nil {
				return "", err
			}
			if n > 0 {
				return "", store.ErrNameTaken
			}
		}
		replaced, err := replaceNameScript.Run(ctx, s.client, []string{namesKey}, name, holder, entry).Int()
		if err != nil {
			return "", err
		}
		if replaced == 1 {
			return entry, nil
		}
		// the entry changed meanwhile: look again
	}
	return "", store.ErrNameTaken
}

// releaseName removes name's entry if it is still entry.
func (s *Store) releaseName(ctx context.Context, name, entry string) error {
	return releaseNameScript.Run(ctx, s.client, []string{namesKey}, name, entry).Err()
}
