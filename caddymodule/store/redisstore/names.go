package redisstore

import (
	"context"
	"math/rand/v2"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/store"
)

// The name index (namesKey) maps each key's name to its id, and, under
// the field "/claim/<name>" (no name holds a '/'), the token of the change
// that claimed the name; absent where a version before tokens claimed it.
// The name's own field stays the bare id, as every version reads it, so
// gateways of older versions sharing the Redis (a rolling upgrade) read
// the index as they always did. A record and its name entry live in
// different hash slots, so no script can change both at once: a change
// writes one, then the other, and can be cut off between them (an outage,
// a failed command). So the index is read with its records, and mended as
// it is read:
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

// nameEntry is what the index holds for a name: the key id, and the token
// of the change that claimed the name ("" if none).
type nameEntry struct{ id, token string }

// claimField is the index field of name's claim token.
func claimField(name string) string { return claimPrefix + name }

const claimPrefix = "/claim/"

// readName reads name's entry; found is false if it has none.
func (s *Store) readName(ctx context.Context, name string) (e nameEntry, found bool, err error) {
	v, err := s.client.HMGet(ctx, namesKey, name, claimField(name)).Result()
	if err != nil {
		return nameEntry{}, false, err
	}
	id, found := v[0].(string)
	token, _ := v[1].(string)
	return nameEntry{id, token}, found, nil
}

// claimNameScript sets a name's entry if it has none. KEYS[1] the name
// index; ARGV[1] name, ARGV[2] id, ARGV[3] token. Returns 1 if set.
var claimNameScript = redis.NewScript(`
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], '` + claimPrefix + `' .. ARGV[1], ARGV[3])
  return 1
end
return 0
`)

// releaseNameScript removes a name's entry if it is still the one read.
// KEYS[1] the name index; ARGV[1] name, ARGV[2] id, ARGV[3] token ("":
// none). Returns 1 if removed.
var releaseNameScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], ARGV[1], '` + claimPrefix + `' .. ARGV[1])
if v[1] == ARGV[2] and (v[2] or '') == ARGV[3] then
  return redis.call('HDEL', KEYS[1], ARGV[1], '` + claimPrefix + `' .. ARGV[1]) > 0 and 1 or 0
end
return 0
`)

// replaceNameScript replaces a name's entry if it is still the one read.
// KEYS[1] the name index; ARGV[1] name, ARGV[2] old id, ARGV[3] old token,
// ARGV[4] new id, ARGV[5] new token. Returns 1 if replaced.
var replaceNameScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], ARGV[1], '` + claimPrefix + `' .. ARGV[1])
if v[1] == ARGV[2] and (v[2] or '') == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], '` + claimPrefix + `' .. ARGV[1], ARGV[5])
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
func (s *Store) claimName(ctx context.Context, name, id string) (nameEntry, error) {
	e := nameEntry{id, strconv.FormatUint(rand.Uint64(), 36)}
	for range 3 {
		set, err := claimNameScript.Run(ctx, s.client, []string{namesKey}, name, e.id, e.token).Int()
		if err != nil {
			return nameEntry{}, err
		}
		if set == 1 {
			return e, nil
		}
		holder, found, err := s.readName(ctx, name)
		if err != nil {
			return nameEntry{}, err
		}
		if !found {
			continue // released meanwhile: claim it again
		}
		if holder.id != id {
			n, err := s.client.Exists(ctx, recordKey(holder.id)).Result()
			if err != nil {
				return nameEntry{}, err
			}
			if n > 0 {
				return nameEntry{}, store.ErrNameTaken
			}
		}
		replaced, err := replaceNameScript.Run(ctx, s.client, []string{namesKey}, name, holder.id, holder.token, e.id, e.token).Int()
		if err != nil {
			return nameEntry{}, err
		}
		if replaced == 1 {
			return e, nil
		}
		// the entry changed meanwhile: look again
	}
	return nameEntry{}, store.ErrNameTaken
}

// releaseName removes name's entry if it is still e.
func (s *Store) releaseName(ctx context.Context, name string, e nameEntry) error {
	return releaseNameScript.Run(ctx, s.client, []string{namesKey}, name, e.id, e.token).Err()
}
