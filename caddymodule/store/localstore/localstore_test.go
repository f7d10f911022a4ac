package localstore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openClaimed(t, filepath.Join(t.TempDir(), "keygate", "keys.json"), nil)
	})
}

// openAt opens and claims the store at path, as a gateway that serves it
// does, closed when the test ends (a second Close is harmless).
func openAt(t *testing.T, path string) *Store {
	t.Helper()
	s := openClaimed(t, path, nil)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openUnclaimed opens the store at path without claiming it, as a config
// only validated does, closed when the test ends.
func openUnclaimed(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatalf("opening %s unclaimed: %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openClaimed opens and claims the store at path.
func openClaimed(tb testing.TB, path string, logger *zap.Logger) *Store {
	tb.Helper()
	s, err := Open(path, logger)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Claim(); err != nil {
		tb.Fatal(err)
	}
	return s
}

// reopen closes s, as a stopping gateway does, and opens its file again.
func reopen(t *testing.T, s *Store) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openAt(t, s.path)
}

func TestSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, filepath.Join(t.TempDir(), "keys.json"))
	k, secret := storetest.NewKey(t, "keeper")
	k.RateLimit = store.Policy{Limit: 10, Window: time.Hour}
	k.ExpiresAt = time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateKey(ctx, "keeper", func(k *store.Key) error { k.Name = "kept"; return nil }); err != nil {
		t.Fatal(err)
	}
	gone, _ := storetest.NewKey(t, "gone")
	if err := s.CreateKey(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash}); v.Status != store.KeyValid {
		t.Fatalf("status %v", v.Status)
	}
	before, _ := s.KeyByName(ctx, "kept")

	s = reopen(t, s)
	after, err := s.KeyByName(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	if after.ID != k.ID || after.Hash != apikey.Sum(secret) || after.Revision != before.Revision ||
		!after.ExpiresAt.Equal(k.ExpiresAt) || after.RateLimit != k.RateLimit || after.LastUsedAt.IsZero() ||
		!after.LastUsedAt.Equal(before.LastUsedAt) {
		t.Fatalf("after restart %+v, before %+v", after, before)
	}
	if _, err := s.KeyByName(ctx, "gone"); err == nil {
		t.Fatal("deleted key came back")
	}
	if id, err := s.KeyIDByHash(ctx, k.Hash); err != nil || id != k.ID {
		t.Fatalf("hash index after restart: %q %v", id, err)
	}
}

// TestFileHoldsOneKeyALineInIDOrder checks the file's layout, which
// persist assembles by hand: each key's line is what json.Marshal makes of
// it, last-used time included, and keys come in id order through creates,
// renames and deletes, so the file diffs cleanly.
func TestFileHoldsOneKeyALineInIDOrder(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, filepath.Join(t.TempDir(), "keys.json"))
	for i := range 20 {
		k, _ := storetest.NewKey(t, "k"+strconv.Itoa(i))
		if i%3 == 0 {
			k.Roles, k.Owner = []string{"upload", "read"}, "team \"ops\""
			k.ExpiresAt = time.Now().Add(time.Hour).UTC()
			k.RateLimit = store.Policy{Limit: 10, Window: time.Minute}
		}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // used: a last-used time to write
			if v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash}); err != nil || v.Status != store.KeyValid {
				t.Fatalf("check: %v %v", v.Status, err)
			}
		}
	}
	if _, err := s.UpdateKey(ctx, "k4", func(k *store.Key) error { k.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, "k7"); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s) // flushes the last-used times
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	keyLines := lines[3 : len(lines)-2] // between "keys": [ and ]
	if len(keyLines) != 19 {
		t.Fatalf("%d key lines, want 19:\n%s", len(keyLines), data)
	}
	var ids []string
	used := 0
	for _, line := range keyLines {
		line = strings.TrimSuffix(strings.TrimSpace(line), ",")
		var fk store.ExportedKey
		if err := json.Unmarshal([]byte(line), &fk); err != nil {
			t.Fatalf("line %s: %v", line, err)
		}
		if want, _ := json.Marshal(fk); string(want) != line {
			t.Fatalf("line\n%s\nis not what json.Marshal makes of it:\n%s", line, want)
		}
		if !fk.LastUsedAt.IsZero() {
			used++
		}
		ids = append(ids, fk.ID)
	}
	if !slices.IsSorted(ids) {
		t.Fatalf("keys not in id order: %v", ids)
	}
	if used != 10 {
		t.Fatalf("%d keys with a last-used time, want 10", used)
	}
}

func TestFileIsPrivateAndHoldsNoSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	s := openClaimed(t, path, nil)
	defer s.Close()
	k, secret := storetest.NewKey(t, "private")
	if err := s.CreateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", info.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), strings.TrimPrefix(secret, "sk_")) {
		t.Fatal("the key file holds the secret")
	}
	if !strings.Contains(string(data), k.Hash.String()) {
		t.Fatal("the key file lacks the hash")
	}
}

func TestConcurrentAdminCalls(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, filepath.Join(t.TempDir(), "keys.json"))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			k, _ := storetest.NewKey(t, "k"+string(rune('a'+i)))
			if err := s.CreateKey(ctx, k); err != nil {
				t.Error(err)
				return
			}
			if _, err := s.UpdateKey(ctx, k.Name, func(k *store.Key) error { k.Name += "-renamed"; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	want, _ := s.Keys(ctx)
	s = reopen(t, s)
	got, _ := s.Keys(ctx)
	if len(got) != 20 || len(want) != 20 {
		t.Fatalf("%d keys after reopen, %d before; want 20", len(got), len(want))
	}
	for i := range got {
		if got[i].Name != want[i].Name || !strings.HasSuffix(got[i].Name, "-renamed") {
			t.Fatalf("key %d: %q after reopen, %q before", i, got[i].Name, want[i].Name)
		}
	}
}

// A change whose file write fails is undone, and its revision is never
// given to another record: requests may have read the undone one, and a
// gateway keeps a record until its revision moves (here, the name it
// sends upstream would stay the undone rename's).
// CreateKeys (an import) creates a batch of keys in one write of the file:
// each one's name refused alone when taken, the rest in id order among the
// keys already there (a later delete finds its key), and all of it still
// there after a restart. A write that fails creates none.
func TestCreateKeysWritesTheBatchOnce(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keygate")
	s := openAt(t, filepath.Join(dir, "keys.json"))
	for i := range 5 {
		storetest.MustCreate(t, s, "old"+strconv.Itoa(i))
	}
	var batch []store.Key
	for i := range 30 {
		k, _ := storetest.NewKey(t, "new"+strconv.Itoa(i))
		batch = append(batch, k)
	}
	batch[7].Name = "old3"
	refused, err := s.CreateKeys(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range refused {
		if want := error(nil); i == 7 {
			want = store.ErrNameTaken
			if !errors.Is(err, want) {
				t.Fatalf("keys[7], named as a stored key: %v, want %v", err, want)
			}
		} else if err != nil {
			t.Fatalf("keys[%d]: %v", i, err)
		}
	}
	if !slices.IsSorted(s.order) || len(s.order) != 34 {
		t.Fatalf("%d ids, sorted %v; want 34 in order", len(s.order), slices.IsSorted(s.order))
	}
	for _, name := range []string{"new0", "new29", "old0"} {
		if err := s.DeleteKey(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, s)
	if names := storetest.SortedNames(t, s); len(names) != 31 || slices.Contains(names, "new0") || !slices.Contains(names, "new28") {
		t.Fatalf("after a restart: %v", names)
	}
	if v, err := s.CheckKey(ctx, store.Check{KeyID: batch[1].ID, Hash: batch[1].Hash}); err != nil || v.Status != store.KeyValid {
		t.Fatalf("a batch's key: %v %v", v.Status, err)
	}

	if err := os.RemoveAll(dir); err != nil { // the write's temp file has nowhere to go
		t.Fatal(err)
	}
	more, _ := storetest.NewKey(t, "unwritten")
	if _, err := s.CreateKeys(ctx, []store.Key{more}); err == nil {
		t.Fatal("a batch whose file could not be written was created")
	}
	if _, err := s.KeyByName(ctx, "unwritten"); !errors.Is(err, store.ErrNotFound) || len(s.order) != 31 {
		t.Fatalf("after the failed write: %v, %d ids; want it gone and 31", err, len(s.order))
	}
}

func TestAFailedWriteLeavesItsRevisionUnused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keygate")
	s := openAt(t, filepath.Join(dir, "keys.json"))
	ctx := context.Background()
	storetest.MustCreate(t, s, "k")
	k, err := s.KeyByName(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil { // the write's temp file has nowhere to go
		t.Fatal(err)
	}
	if _, err := s.UpdateKey(ctx, "k", func(k *store.Key) error { k.Name = "undone"; return nil }); err == nil {
		t.Fatal("a change whose file could not be written was made")
	}
	undone := k.Revision + 1 // what the failed change's record had
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := s.KeyByName(ctx, "k")
	if err != nil || got.Revision == undone {
		t.Fatalf("after the failed change: %+v, %v; want the key under a revision other than %d", got, err, undone)
	}
	next, err := s.UpdateKey(ctx, "k", func(k *store.Key) error { k.Name = "made"; return nil })
	if err != nil || next.Revision == undone {
		t.Fatalf("the next change: revision %d, %v; want one other than the undone change's %d", next.Revision, err, undone)
	}
}

// One process at a time writes a key file: a second claim (here in the
// same process; another process's is refused alike) would rewrite the
// file from what it holds, dropping the first one's changes. Opening it
// unclaimed (a config only validated) is fine, and writes nothing.
func TestSecondClaimIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	first := openAt(t, path)
	storetest.MustCreate(t, first, "on-first")
	second := openUnclaimed(t, path) // a claimed store opens unclaimed
	if _, err := second.KeyByName(context.Background(), "on-first"); err != nil {
		t.Fatal(err)
	}
	if err := second.Claim(); err == nil || !strings.Contains(err.Error(), "in use by another keygate (process "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("second Claim: %v, want refused as in use", err)
	}
	k, _ := storetest.NewKey(t, "on-second")
	if err := second.CreateKey(context.Background(), k); err == nil {
		t.Fatal("an unclaimed store wrote a key")
	}
	// what the first changes before it closes, the second's claim reads:
	// its first write must not undo it (an overlapping restart)
	if _, err := first.UpdateKey(context.Background(), "on-first", func(k *store.Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	storetest.MustCreate(t, first, "late")
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.CreateKey(context.Background(), k); err == nil { // nor may a closed store write
		t.Fatal("a closed store wrote a key")
	}
	if err := second.Claim(); err != nil { // once the first is closed
		t.Fatal(err)
	}
	storetest.MustCreate(t, second, "on-second")
	third := reopen(t, second)
	ctx := context.Background()
	if got, err := third.KeyByName(ctx, "on-first"); err != nil || got.Enabled {
		t.Errorf("on-first after the second's write: %+v, %v; want it disabled, as the first left it", got, err)
	}
	for _, name := range []string{"late", "on-second"} {
		if _, err := third.KeyByName(ctx, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A claim that finds the file unreadable (the process that held it left it
// corrupt) fails, and the keys read at Open stay as they were: the
// requests served meanwhile are not refused for keys it lost.
func TestFailedClaimKeepsTheKeysRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	first := openAt(t, path)
	storetest.MustCreate(t, first, "kept")
	second := openUnclaimed(t, path)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := second.Claim(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("claim of a corrupt file: %v", err)
	}
	if _, err := second.KeyByName(context.Background(), "kept"); err != nil {
		t.Fatalf("after the failed claim: %v", err)
	}
}

// A key file and directory readable by others (restored from a backup) are
// made private when opened, not at the next change.
func TestLooseFileIsTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keygate")
	path := filepath.Join(dir, "keys.json")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"version": 1, "keys": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openAt(t, path)
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		if info, err := os.Stat(p); err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: %v (%v), want %v", p, info.Mode().Perm(), err, want)
		}
	}
}

// A background write of last-used times that fails is logged: no caller
// would hear of it.
func TestFailedBackgroundWriteIsLogged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keygate")
	core, logs := observer.New(zap.ErrorLevel)
	s := openClaimed(t, filepath.Join(dir, "keys.json"), zap.New(core))
	t.Cleanup(func() { _ = s.Close() })
	k, _ := storetest.MustCreate(t, s, "used")
	if _, err := s.CheckKey(context.Background(), store.Check{KeyID: k.ID, Hash: k.Hash}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	s.flushInBackground()
	if logs.FilterMessage("writing last-used times").Len() != 1 {
		t.Fatalf("logged %v, want the failed write", logs.All())
	}
}

func TestCorruptFileIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, nil); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Open(corrupt) err = %v", err)
	}
}

// A keys.json naming a key twice (edited or merged by hand) is refused:
// loaded, the second key took the first's name over, and "disable a"
// disabled another key than a.
func TestFileNamingAKeyTwiceIsRefused(t *testing.T) {
	a, _ := storetest.NewKey(t, "a")
	b, _ := storetest.NewKey(t, "b")
	for _, c := range []struct {
		change func(k *store.Key)
		want   string
	}{
		{func(k *store.Key) { k.ID = a.ID }, "the id of a key before it"},
		{func(k *store.Key) { k.Hash = a.Hash }, "the sha256 of a key before it"},
		{func(k *store.Key) { k.Name = a.Name }, "the name of a key before it"},
	} {
		second := b
		c.change(&second)
		data, err := store.Export{Version: store.ExportVersion, Keys: []store.ExportedKey{store.Exported(a), store.Exported(second)}}.MarshalLines()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "keys.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%s) err = %v, want %q", data, err, c.want)
		}
	}
}

func BenchmarkCheckKey(b *testing.B) {
	s := openClaimed(b, filepath.Join(b.TempDir(), "keys.json"), nil)
	defer s.Close()
	k, _ := storetest.NewKey(b, "bench")
	if err := s.CreateKey(context.Background(), k); err != nil {
		b.Fatal(err)
	}
	for _, alg := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		b.Run(string(alg), func(b *testing.B) {
			c := store.Check{KeyID: k.ID, Hash: k.Hash, Revision: 1, Policy: store.Policy{Limit: 1 << 40, Window: time.Second}, Algorithm: alg}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if v, _ := s.CheckKey(context.Background(), c); !v.Limit.Allowed {
						b.Fatal("refused")
					}
				}
			})
		})
	}
}

// BenchmarkCreateKeyAmong is what an admin change costs on a store that
// holds n keys: each rewrites and fsyncs the whole file.
func BenchmarkCreateKeyAmong(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			s := openClaimed(b, filepath.Join(b.TempDir(), "keys.json"), nil)
			defer s.Close()
			ctx := context.Background()
			for i := range n {
				k, _ := storetest.NewKey(b, "k"+strconv.Itoa(i))
				s.mu.Lock()
				s.index(&record{key: k})
				s.mu.Unlock()
			}
			b.ResetTimer()
			for i := range b.N {
				k, _ := storetest.NewKey(b, "new"+strconv.Itoa(i))
				if err := s.CreateKey(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkImport10000 creates 10,000 keys in an empty store, as an
// import does: one CreateKeys, against one CreateKey each (which rewrites
// the file per key).
func BenchmarkImport10000(b *testing.B) {
	keys := make([]store.Key, 10_000)
	for i := range keys {
		keys[i], _ = storetest.NewKey(b, "k"+strconv.Itoa(i))
	}
	for _, batch := range []bool{true, false} {
		b.Run(map[bool]string{true: "CreateKeys", false: "CreateKey"}[batch], func(b *testing.B) {
			for b.Loop() {
				s := openClaimed(b, filepath.Join(b.TempDir(), "keys.json"), nil)
				if batch {
					if _, err := s.CreateKeys(context.Background(), keys); err != nil {
						b.Fatal(err)
					}
				}
				for i := 0; !batch && i < len(keys); i++ {
					if err := s.CreateKey(context.Background(), keys[i]); err != nil {
						b.Fatal(err)
					}
				}
				_ = s.Close()
			}
		})
	}
}

// BenchmarkFlushLastUsed is the embedded store's background write of
// last-used times (every flushEvery) with 10,000 keys, all of them used
// since the last: a burst of CPU on a gateway's busy path every ten seconds.
func BenchmarkFlushLastUsed(b *testing.B) {
	s := openClaimed(b, filepath.Join(b.TempDir(), "keys.json"), nil)
	defer s.Close()
	recs := make([]*record, 10_000)
	for i := range recs {
		k, _ := storetest.NewKey(b, "k"+strconv.Itoa(i))
		recs[i] = &record{key: k}
		s.mu.Lock()
		s.index(recs[i])
		s.mu.Unlock()
	}
	use := func(at int64) {
		for _, r := range recs {
			r.lastUsed.Store(at)
		}
		s.lastUsedDirty.Store(true)
		if err := s.flushLastUsed(); err != nil {
			b.Fatal(err)
		}
	}
	now := time.Now().UnixMilli()
	use(now) // each key's first write, as a running store has done
	cpu := processCPU()
	b.ResetTimer()
	for i := range b.N {
		use(now + int64(i+1)*flushEvery.Milliseconds())
	}
	b.StopTimer()
	// ns/op includes waiting for the disk (fsync); this is the CPU
	b.ReportMetric(float64(processCPU()-cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
