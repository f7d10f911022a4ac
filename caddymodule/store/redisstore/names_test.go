package redisstore

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

// storeWithKey is a store on a Redis of its own, a client of that Redis
// (to look at or change what the store keeps), and a key named name.
func storeWithKey(t *testing.T, name string) (*Store, *redis.Client, store.Key) {
	t.Helper()
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	k, _ := storetest.MustCreate(t, s, name)
	return s, srv.Client(t), k
}

// A name entry left behind by a change cut off halfway (names.go) names
// nothing: its name is not found, can be created again, is not listed, and
// never leads to another key.
func TestNameIndexLeftoversNameNothing(t *testing.T) {
	s, rdb, real := storeWithKey(t, "real")
	ctx := context.Background()

	// an entry whose record is gone: a deletion that did not get to it
	rdb.HSet(ctx, namesKey, "gone", "no-such-id", "gone-too", "no-such-id")
	if _, err := s.KeyByName(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeyByName(gone) err = %v, want ErrNotFound", err)
	}
	if rdb.HExists(ctx, namesKey, "gone").Val() {
		t.Error("KeyByName left the entry of a missing record in place")
	}
	storetest.MustCreate(t, s, "gone-too") // taken over
	rdb.HSet(ctx, namesKey, "gone", "no-such-id")
	if _, err := s.UpdateKey(ctx, "real", func(k *store.Key) error { k.Name = "gone"; return nil }); err != nil {
		t.Fatalf("rename onto a name whose record is gone: %v", err)
	}
	if _, err := s.UpdateKey(ctx, "gone", func(k *store.Key) error { k.Name = "real"; return nil }); err != nil {
		t.Fatal(err)
	}

	// an entry whose record is under another name: a rename that did not
	// get to release its old name
	rdb.HSet(ctx, namesKey, "stale", real.ID)
	if k, err := s.KeyByName(ctx, "stale"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeyByName(stale) = %s, %v; want ErrNotFound, not the key now named %s", k.Name, err, k.Name)
	}
	if err := s.DeleteKey(ctx, "stale"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteKey(stale) err = %v, want ErrNotFound", err)
	}
	if names := storetest.SortedNames(t, s); !slices.Equal(names, []string{"gone-too", "real"}) {
		t.Fatalf("Keys = %v, want [gone-too real]: each key once, under its record's name", names)
	}
}

// A caller that leaves does not cut a change short: what was begun is done
// (each command is still bounded by the store's timeout).
func TestChangesOutliveTheirCaller(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	k, _ := storetest.NewKey(t, "left")
	if err := s.CreateKey(gone, k); err != nil {
		t.Fatalf("CreateKey for a caller that left: %v", err)
	}
	if _, err := s.UpdateKey(gone, "left", func(k *store.Key) error { k.Name = "renamed"; return nil }); err != nil {
		t.Fatalf("UpdateKey for a caller that left: %v", err)
	}
	ctx := context.Background()
	if got, err := s.KeyByName(ctx, "renamed"); err != nil || got.ID != k.ID {
		t.Fatalf("KeyByName(renamed) = %s, %v", got.ID, err)
	}
	if err := s.DeleteKey(gone, "renamed"); err != nil {
		t.Fatalf("DeleteKey for a caller that left: %v", err)
	}
	if _, err := s.KeyIDByHash(ctx, k.Hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key's hash still indexed: %v", err)
	}
}

// A rename or a rotation whose script go-redis ran twice is made, not
// undone: the second run's "revision moved" is read back as this change.
func TestChangesSurviveARetriedScript(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	ctx := context.Background()
	twice := new(redistest.ScriptsRunTwice)
	s.client.AddHook(twice)
	k, _ := storetest.MustCreate(t, s, "twice")
	twice.Armed.Store(true)
	fresh, _ := storetest.NewKey(t, "unused")
	got, err := s.UpdateKey(ctx, "twice", func(k *store.Key) error { k.Name, k.Hash = "renamed", fresh.Hash; return nil })
	if err != nil || got.Name != "renamed" {
		t.Fatalf("UpdateKey = %s, %v", got.Name, err)
	}
	if r, err := s.KeyByName(ctx, "renamed"); err != nil || r.Hash != fresh.Hash {
		t.Fatalf("KeyByName(renamed) = %+v, %v: the change was undone", r, err)
	}
	if id, err := s.KeyIDByHash(ctx, fresh.Hash); err != nil || id != k.ID {
		t.Fatalf("the new secret's hash: %q, %v; want it indexed to %s", id, err, k.ID)
	}
}

// A creation whose script go-redis ran twice (its reply lost) is made: the
// second run finds the record its own (its token), not another's.
func TestCreationSurvivesARetriedScript(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	twice := new(redistest.ScriptsRunTwice)
	s.client.AddHook(twice)
	twice.Armed.Store(true)
	k, secret := storetest.MustCreate(t, s, "twice")
	if v, err := s.CheckKey(context.Background(), store.Check{KeyID: k.ID, Hash: apikey.Sum(secret)}); err != nil || v.Status != store.KeyValid {
		t.Fatalf("the key created with its script run twice: %v, %v", v.Status, err)
	}
}

// A creation cut short after writing its record (the store failing before
// the name was claimed, and the cleanup failing too) leaves a record still
// marked as a creation's: the same key created again (an import run again)
// finishes it, and the finished record keeps no mark; another key under
// its id is refused.
func TestCreationCutShortIsFinishedByTheNext(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	rdb := srv.Client(t)
	k, secret := storetest.NewKey(t, "cut-short")
	k.Revision = 1
	if err := rdb.HSet(ctx, recordKey(k.ID), append([]any{"t", "gone"}, recordFields(k)...)...).Err(); err != nil {
		t.Fatal(err)
	}
	other, _ := storetest.NewKey(t, "other")
	other.ID = k.ID
	if err := s.CreateKey(ctx, other); !errors.Is(err, store.ErrIDTaken) {
		t.Fatalf("another key over the leftover: %v, want ErrIDTaken", err)
	}
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatalf("the same key again: %v", err)
	}
	if v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: apikey.Sum(secret)}); err != nil || v.Status != store.KeyValid {
		t.Fatalf("the finished key: %v, %v", v.Status, err)
	}
	if names := storetest.SortedNames(t, s); !slices.Equal(names, []string{"cut-short"}) {
		t.Fatalf("listed: %v", names)
	}
	if n, err := rdb.HExists(ctx, recordKey(k.ID), "t").Result(); err != nil || n {
		t.Fatalf("the finished record still has its creation's mark: %v, %v", n, err)
	}
}

// A creation whose finish failed leaves its mark on a working key: a key
// changed since (here disabled) is no creation's to finish, and the same
// key created again (an import run again) is refused its id, not written
// over the change.
func TestChangedKeyIsNoCreationsToFinish(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv, time.Second)
	ctx := context.Background()
	k, secret := storetest.MustCreate(t, s, "finished")
	if err := srv.Client(t).HSet(ctx, recordKey(k.ID), "t", "unfinished").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateKey(ctx, k.Name, func(k *store.Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, k); !errors.Is(err, store.ErrIDTaken) {
		t.Fatalf("the same key created over its disabled self: %v, want ErrIDTaken", err)
	}
	if v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: apikey.Sum(secret)}); err != nil || v.Status == store.KeyValid {
		t.Fatalf("the disabled key after it: %v, %v", v.Status, err)
	}
}

// A rename or a rotation whose reply was lost after another change landed
// on top of it (here a disable, from another replica) is read back as
// made: releasing its new name or its new secret's index, as a change not
// made, would leave the key unnamed (unlisted, not to be revoked) or its
// only working secret unindexed.
func TestChangesOverlaidByAnotherSurviveALostReply(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(k *store.Key, fresh store.Key)
	}{
		{"rename", func(k *store.Key, _ store.Key) { k.Name = "renamed" }},
		{"rotate", func(k *store.Key, fresh store.Key) { k.Hash, k.Prefix = fresh.Hash, fresh.Prefix }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, redistest.Start(t), time.Second)
			ctx := context.Background()
			k, _ := storetest.MustCreate(t, s, "overlaid")
			fresh, _ := storetest.NewKey(t, "unused")
			want := k
			tc.change(&want, fresh)
			lost := &replyLostAfterScript{then: func() {
				if _, err := s.UpdateKey(ctx, want.Name, func(k *store.Key) error { k.Enabled = false; return nil }); err != nil {
					t.Errorf("the change on top: %v", err)
				}
			}}
			lost.armed.Store(true)
			s.client.AddHook(lost)
			s.UpdateKey(ctx, "overlaid", func(k *store.Key) error { tc.change(k, fresh); return nil })

			got, err := s.KeyByName(ctx, want.Name)
			if err != nil || got.ID != k.ID || got.Enabled || got.Hash != want.Hash {
				t.Fatalf("KeyByName(%s) = %+v, %v; want the key, disabled, with its new name and secret", want.Name, got, err)
			}
			if id, err := s.KeyIDByHash(ctx, want.Hash); err != nil || id != k.ID {
				t.Fatalf("the key's secret's hash: %q, %v; want it indexed to %s", id, err, k.ID)
			}
			if keys, err := s.Keys(ctx); err != nil || len(keys) != 1 || keys[0].Name != want.Name {
				t.Fatalf("Keys = %+v, %v; want the key once, as %s", keys, err, want.Name)
			}
		})
	}
}

// replyLostAfterScript is a go-redis hook that, once armed, lets the next
// script on a record run, runs then (another change landing on top), and
// reports the script's reply lost.
type replyLostAfterScript struct {
	commandHook
	armed atomic.Bool
	then  func()
}

func (h *replyLostAfterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name, args := cmd.Name(), cmd.Args()
		onIndex := len(args) > 3 && args[3] == namesKey // a claim's script, not the record's
		if err := next(ctx, cmd); err != nil || name != "eval" && name != "evalsha" || onIndex || !h.armed.CompareAndSwap(true, false) {
			return err // NOSCRIPT included: go-redis sends EVAL next
		}
		h.then()
		return errors.New("i/o timeout: reply lost")
	}
}

// A rename back to the name a rename of the same key is leaving, made
// before that one released it, keeps the name: the first rename's release
// is of the entry it read, which the second claimed afresh. (With entries
// of the id alone, the release removed the name the record now holds: the
// key unnamed, unlisted, not to be revoked, its secret still admitted.)
func TestRenameBackBeforeTheReleaseKeepsTheName(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "a")
	back := &changeBefore{
		match: func(cmd redis.Cmder) bool {
			args := cmd.Args()
			return cmd.Name() == "evalsha" && len(args) > 4 && args[1] == releaseNameScript.Hash() && args[4] == "a"
		},
		then: func() {
			if _, err := s.UpdateKey(ctx, "b", func(k *store.Key) error { k.Name = "a"; return nil }); err != nil {
				t.Errorf("renaming b back to a: %v", err)
			}
		},
	}
	back.armed.Store(true)
	s.client.AddHook(back)
	if _, err := s.UpdateKey(ctx, "a", func(k *store.Key) error { k.Name = "b"; return nil }); err != nil {
		t.Fatalf("renaming a to b: %v", err)
	}
	if back.armed.Load() {
		t.Fatal("the rename back never ran")
	}
	if got, err := s.KeyByName(ctx, "a"); err != nil || got.ID != k.ID {
		t.Fatalf("KeyByName(a) = %+v, %v; want the key", got, err)
	}
	if keys, err := s.Keys(ctx); err != nil || len(keys) != 1 || keys[0].Name != "a" {
		t.Fatalf("Keys = %+v, %v; want the key once, as a", keys, err)
	}
}

// A deletion that a rename overtakes, between its lookup of the name and
// its removal of the record, does not delete the renamed key: the name it
// was asked to delete names no key by then.
func TestDeletionOvertakenByARenameLeavesTheKey(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "a")
	rename := &changeBefore{
		match: func(cmd redis.Cmder) bool {
			name := cmd.Name()
			return (name == "del" || name == "evalsha") && slices.Contains(cmd.Args(), any(recordKey(k.ID)))
		},
		then: func() {
			if _, err := s.UpdateKey(ctx, "a", func(k *store.Key) error { k.Name = "b"; return nil }); err != nil {
				t.Errorf("renaming a to b: %v", err)
			}
		},
	}
	rename.armed.Store(true)
	s.client.AddHook(rename)
	if err := s.DeleteKey(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteKey(a) err = %v, want ErrNotFound: a was renamed first", err)
	}
	if rename.armed.Load() {
		t.Fatal("the rename never ran")
	}
	if got, err := s.KeyByName(ctx, "b"); err != nil || got.ID != k.ID {
		t.Fatalf("KeyByName(b) = %+v, %v; want the renamed key, not deleted", got, err)
	}
	if id, err := s.KeyIDByHash(ctx, k.Hash); err != nil || id != k.ID {
		t.Fatalf("the key's hash: %q, %v; want it still indexed", id, err)
	}
}

// changeBefore is a go-redis hook that, once armed, runs then (another
// change) before the first command that match accepts, and that command
// after it.
type changeBefore struct {
	commandHook
	armed atomic.Bool
	match func(redis.Cmder) bool
	then  func()
}

func (h *changeBefore) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.armed.Load() && h.match(cmd) && h.armed.CompareAndSwap(true, false) {
			h.then()
		}
		return next(ctx, cmd)
	}
}

// A change that other changes keep overtaking is given up with
// store.ErrContended (the admin API's 409), having made nothing.
func TestChangeOvertakenTooOftenIsContended(t *testing.T) {
	s, rdb, k := storeWithKey(t, "busy")
	ctx := context.Background()
	var overtake *changeBefore
	overtake = &changeBefore{
		match: func(cmd redis.Cmder) bool {
			args := cmd.Args()
			return cmd.Name() == "evalsha" && len(args) > 1 && args[1] == updateScript.Hash()
		},
		then: func() {
			rdb.HIncrBy(ctx, recordKey(k.ID), "v", 1) // another replica's change
			overtake.armed.Store(true)
		},
	}
	overtake.armed.Store(true)
	s.client.AddHook(overtake)
	if _, err := s.UpdateKey(ctx, "busy", func(k *store.Key) error { k.Name = "renamed"; return nil }); !errors.Is(err, store.ErrContended) {
		t.Fatalf("UpdateKey err = %v, want ErrContended", err)
	}
	overtake.armed.Store(false)
	if got, err := s.KeyByName(ctx, "busy"); err != nil || got.ID != k.ID {
		t.Fatalf("KeyByName(busy) = %+v, %v; want the key, unchanged", got, err)
	}
	if _, err := s.KeyByName(ctx, "renamed"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeyByName(renamed) err = %v; want ErrNotFound", err)
	}
}

// A rotation whose record write's answer is lost, and cannot be read back
// either, may have been made: UpdateKey says so (store.ErrUnconfirmed) and
// returns the key as changed, so that the admin API can show the new
// secret, the only one that works if it was.
func TestUnconfirmedRotationReturnsTheKey(t *testing.T) {
	s := open(t, redistest.Start(t), time.Second)
	ctx := context.Background()
	k, _ := storetest.MustCreate(t, s, "rotated")
	fresh, _ := storetest.NewKey(t, "unused")
	s.client.AddHook(&lostThenUnreadable{record: recordKey(k.ID)})
	got, err := s.UpdateKey(ctx, "rotated", func(k *store.Key) error { k.Hash, k.Prefix = fresh.Hash, fresh.Prefix; return nil })
	if !errors.Is(err, store.ErrUnconfirmed) || got.Hash != fresh.Hash {
		t.Fatalf("UpdateKey = hash %s, %v; want the new hash and ErrUnconfirmed", got.Hash, err)
	}
	if k, err := s.KeyByName(ctx, "rotated"); err != nil || k.Hash != fresh.Hash {
		t.Fatalf("KeyByName = %+v, %v; the rotation was made", k, err)
	}
}

// lostThenUnreadable is a go-redis hook that reports the first script on
// record (its write) lost after it ran, and fails the hmget after it.
type lostThenUnreadable struct {
	commandHook
	record string
	step   atomic.Int32
}

func (h *lostThenUnreadable) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		switch {
		case h.step.Load() == 0 && (name == "eval" || name == "evalsha") && len(cmd.Args()) > 3 && cmd.Args()[3] == h.record:
			if err := next(ctx, cmd); err != nil {
				return err // NOSCRIPT: go-redis sends EVAL next
			}
			h.step.Store(1)
			return errors.New("i/o timeout: reply lost")
		case h.step.Load() == 1 && name == "hmget":
			h.step.Store(2)
			return errors.New("i/o timeout: no answer")
		}
		return next(ctx, cmd)
	}
}

// The index keeps each name's field the bare key id, as versions before
// claim tokens wrote and read it, the token in a field of its own: a
// gateway of an older version sharing the Redis (a rolling upgrade) finds
// keys by name as before. An entry such a version claimed, without a
// token, is released and replaced as any other; listings show names only.
func TestNameIndexStaysReadableByOlderVersions(t *testing.T) {
	s, rdb, k := storeWithKey(t, "k")
	ctx := context.Background()
	if id, err := rdb.HGet(ctx, namesKey, "k").Result(); err != nil || id != k.ID {
		t.Fatalf("the name's field after a creation: %q, %v; want the bare id %s", id, err, k.ID)
	}
	if _, err := s.UpdateKey(ctx, "k", func(k *store.Key) error { k.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	if id, err := rdb.HGet(ctx, namesKey, "renamed").Result(); err != nil || id != k.ID {
		t.Fatalf("the name's field after a rename: %q, %v; want the bare id %s", id, err, k.ID)
	}
	if n := rdb.Exists(ctx, namesKey).Val(); n != 1 || rdb.HExists(ctx, namesKey, "k").Val() || rdb.HExists(ctx, namesKey, claimField("k")).Val() {
		t.Fatal("the old name, or its claim, was left in the index")
	}

	// as an older version claims: the id alone
	legacy, _ := storetest.MustCreate(t, s, "legacy")
	rdb.HDel(ctx, namesKey, claimField("legacy"))
	if _, err := s.UpdateKey(ctx, "legacy", func(k *store.Key) error { k.Name = "modern"; return nil }); err != nil {
		t.Fatalf("renaming an entry without a token: %v", err)
	}
	if got, err := s.KeyByName(ctx, "modern"); err != nil || got.ID != legacy.ID {
		t.Fatalf("KeyByName(modern) = %+v, %v", got, err)
	}
	if rdb.HExists(ctx, namesKey, "legacy").Val() {
		t.Fatal("the token-less old name was not released")
	}
	if names := storetest.SortedNames(t, s); !slices.Equal(names, []string{"modern", "renamed"}) {
		t.Fatalf("Keys = %v; want modern and renamed, no claim fields", names)
	}
}

// commandHook passes dials and pipelines through: the hooks above act on
// single commands.
type commandHook struct{}

func (commandHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (commandHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
