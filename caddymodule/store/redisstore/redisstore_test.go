package redisstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(redistest.Start(t).URL(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// No secret may reach Redis, neither in a key name nor in a value.
func TestNoPlaintextInRedis(t *testing.T) {
	srv := redistest.Start(t)
	s, err := Open(srv.URL(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	k, secret := storetest.NewKey(t, "secretive")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 5, Window: time.Minute}, Algorithm: store.SlidingLog}); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	names, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	secretHex := strings.TrimPrefix(secret, "sk_")
	for _, name := range names {
		if strings.Contains(name, secretHex) {
			t.Fatalf("redis key name %q contains the secret", name)
		}
		var values []string
		switch typ := rdb.Type(ctx, name).Val(); typ {
		case "string":
			values = []string{rdb.Get(ctx, name).Val()}
		case "hash":
			for f, v := range rdb.HGetAll(ctx, name).Val() {
				values = append(values, f, v)
			}
		case "zset":
			values = rdb.ZRange(ctx, name, 0, -1).Val()
		default:
			t.Fatalf("unexpected type %s of %s", typ, name)
		}
		if strings.Contains(strings.Join(values, " "), secretHex) {
			t.Fatalf("redis value of %q contains the secret", name)
		}
	}
}
