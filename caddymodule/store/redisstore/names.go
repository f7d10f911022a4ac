package redisstore

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/store"
)

// The name index (namesKey) maps each key's name to its id. A record and
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
//   - every entry is removed or replaced only if it still holds the id it
//     was read with (a script on the index alone), so mending one never
//     undoes another change's.
//
// A creation writes the record before its name entry, so an entry whose
// record is missing is never one in the making.

// releaseNameScript removes a name's entry if it still maps to the id.
// KEYS[1] the name index; ARGV[1] name, ARGV[2] id. Returns 1 if removed.
var releaseNameScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
`)

// replaceNameScript points a name's entry at a new id if it still maps to
// the old one. KEYS[1] the name index; ARGV[1] name, ARGV[2] old id, ARGV[3]
// new id. Returns 1 if replaced.
var replaceNameScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
`)

// claimName reserves name for id: store.ErrNameTaken if another key's
// record holds it (or is being renamed to it). An entry whose record is
// gone is taken over; one that is id's already is kept.
func (s *Store) claimName(ctx context.Context, name, id string) error {
	for range 3 {
		ok, err := s.client.HSetNX(ctx, namesKey, name, id).Result()
		if err != nil || ok {
			return err
		}
		holder, err := s.client.HGet(ctx, namesKey, name).Result()
		if errors.Is(err, redis.Nil) {
			continue // released meanwhile: claim it again
		}
		if err != nil || holder == id {
			return err // already this key's: a change cut off before released it
		}
		n, err := s.client.Exists(ctx, recordKey(holder)).Result()
		if err != nil {
			return err
		}
		if n > 0 {
			return store.ErrNameTaken
		}
		replaced, err := replaceNameScript.Run(ctx, s.client, []string{namesKey}, name, holder, id).Int()
		if err != nil || replaced == 1 {
			return err
		}
		// the entry changed meanwhile: look again
	}
	return store.ErrNameTaken
}

// releaseName removes name's entry if it still maps to id.
func (s *Store) releaseName(ctx context.Context, name, id string) error {
	return releaseNameScript.Run(ctx, s.client, []string{namesKey}, name, id).Err()
}
