package redisstore

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The passcode attempts held on a secret are a hash, P attempts:<id>, of
// one field per reservation (its token), so that HLEN counts them and a
// release deletes exactly its own. The hash gets its expiry, the window,
// in the same script that creates it: no hash without one can be left
// behind (it would lock the secret for good), and a script go-redis sends
// again after losing its reply finds its token and counts once.

// reserveAttempt holds a reservation (ARGV[1], the token) on KEYS[1]
// unless ARGV[2] are held already; a new hash expires after ARGV[3] ms.
// It answers {1, ms left in the window} when the token holds one, or {0,
// ms left} when the attempt is refused.
var reserveAttempt = redis.NewScript(`
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  ttl = tonumber(ARGV[3])
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, ttl} end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then return {0, ttl} end
redis.call('HSET', KEYS[1], ARGV[1], 1)
if ttl == -2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  ttl = tonumber(ARGV[3])
end
return {1, ttl}
`)

// ReservePasscodeAttempt implements store.SecretStore.
func (s *Store) ReservePasscodeAttempt(ctx context.Context, id string, limit int, window time.Duration) (string, time.Time, error) {
	token := rand.Text()
	res, err := reserveAttempt.Run(ctx, s.rdb, []string{s.key("attempts:", id)}, token, limit, window.Milliseconds()).Int64Slice()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("redisstore: reserving passcode attempt: %w", err)
	}
	if len(res) != 2 {
		return "", time.Time{}, fmt.Errorf("redisstore: reserving passcode attempt: unexpected reply %v", res)
	}
	until := s.cfg.Now().Add(time.Duration(res[1]) * time.Millisecond)
	if res[0] != 1 {
		return "", until, nil
	}
	return token, until, nil
}

// ReleasePasscodeAttempt implements store.SecretStore: HDEL deletes the
// token's field, if it is still there, and Redis the hash with its last.
func (s *Store) ReleasePasscodeAttempt(ctx context.Context, id, token string) error {
	if err := s.rdb.HDel(ctx, s.key("attempts:", id), token).Err(); err != nil {
		return fmt.Errorf("redisstore: releasing passcode attempt: %w", err)
	}
	return nil
}
