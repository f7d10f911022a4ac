package keygate

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/redistest"
)

// Moving from the embedded store to Redis: the embedded store's keys.json,
// imported into Redis, keeps every key's secret working, with its id,
// roles, owner, limit and state; an import run again skips what is there;
// and an export of Redis imports into another Redis alike.
func TestImportMovesKeysBetweenStores(t *testing.T) {
	g := startGateway(t, "", protectedSite) // embedded
	mover := generate(t, "--name", "moving-a", "--roles", "upload", "--owner", "alice", "--rate-limit", "50/1h", "--expires", "2099-01-01")
	off := generate(t, "--name", "moving-b", "--roles", "upload")
	mustCLI(t, "disable", "moving-b")
	if r := g.get("/api/x", bearer(mover.Key)...); r.status != http.StatusOK {
		t.Fatalf("on the embedded store: %d", r.status)
	}

	g = startRedisGateway(t, "", protectedSite)
	wantProblem(t, g.get("/api/x", bearer(mover.Key)...), http.StatusUnauthorized, "Invalid API key")
	keysFile := filepath.Join(caddy.AppDataDir(), "keygate", "keys.json")
	var res importResult
	mustJSON(t, mustCLI(t, "import", keysFile, "--json"), &res)
	if !slices.Contains(res.Imported, "moving-a") || !slices.Contains(res.Imported, "moving-b") {
		t.Fatalf("import of keys.json = %+v, want moving-a and moving-b imported", res)
	}
	r := g.get("/api/x", bearer(mover.Key)...)
	if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != mover.ID || r.upstreamSaw.Get("X-Keygate-Owner") != "alice" {
		t.Fatalf("the moved key on Redis: %d, upstream saw %v", r.status, r.upstreamSaw)
	}
	wantRateHeaders(t, r, "key", 50, 3600, 49)
	wantProblem(t, g.get("/api/x", bearer(off.Key)...), http.StatusUnauthorized, "Invalid API key")
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	i := slices.IndexFunc(listed, func(v keyView) bool { return v.Name == "moving-a" })
	if i < 0 {
		t.Fatalf("moving-a not listed: %+v", listed)
	}
	if moved := listed[i]; moved.ID != mover.ID || moved.ExpiresAt == nil || !moved.ExpiresAt.Equal(*mover.ExpiresAt) ||
		!slices.Equal(moved.Roles, []string{"upload"}) || moved.RateLimit != "50/1h" || moved.Owner != "alice" || moved.Status != "active" {
		t.Fatalf("moved key = %+v, want %+v's id, roles, owner, limit and expiry", moved, mover)
	}

	// again: everything is there already
	out := mustCLI(t, "import", keysFile)
	if !strings.Contains(out, "Imported 0 keys;") || !strings.Contains(out, `skipped "moving-a": a key with its id is in the store`) {
		t.Fatalf("second import printed %q", out)
	}

	// an export of Redis, into another Redis; the file as private as the
	// store
	file := filepath.Join(t.TempDir(), "export.json")
	if err := os.WriteFile(file, nil, 0o644); err != nil { // one there already
		t.Fatal(err)
	}
	mustCLI(t, "export", file)
	export, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var e store.Export
	mustJSON(t, string(export), &e)
	if e.Version != store.ExportVersion || len(e.Keys) < 2 || strings.Contains(string(export), mover.Key) {
		t.Fatalf("export = %s", export)
	}
	if info, err := os.Stat(file); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("export file: %v, %v; want 0600", info.Mode(), err)
	}
	// a key a line, as keys.json: about the size of the compact JSON an
	// import takes (indented throughout, it was a third larger)
	if lines := strings.Count(string(export), "\n"); lines != len(e.Keys)+5 {
		t.Fatalf("export file of %d keys has %d lines, want a key a line:\n%s", len(e.Keys), lines, export)
	}
	for _, args := range [][]string{{"export"}, {"export", "-"}} { // "-": stdout, as import's is stdin
		if stdout := mustCLI(t, args...); !strings.Contains(stdout, `"sha256"`) {
			t.Fatalf("%v to stdout: %q", args, stdout)
		}
	}
	var written struct {
		Exported int
		File     string
	}
	mustJSON(t, mustCLI(t, "export", file, "--json"), &written)
	if written.Exported != len(e.Keys) || written.File != file {
		t.Fatalf("export FILE --json = %+v", written)
	}
	g = startGatewayOn(t, redistest.Start(t), protectedSite)
	generate(t, "--name", "moving-b") // another key has its name there
	// what counts against the import's limit is the compact JSON sent, not
	// the file's whitespace (an export indented throughout, an older CLI's)
	padded := filepath.Join(t.TempDir(), "padded.json")
	if err := os.WriteFile(padded, append(bytes.Repeat([]byte(" \n"), maxImportBody/2+1), export...), 0o600); err != nil {
		t.Fatal(err)
	}
	file = padded
	mustJSON(t, mustCLI(t, "import", file, "--json"), &res)
	if !slices.Contains(res.Imported, "moving-a") || !slices.Contains(res.Skipped, skippedKey{"moving-b", "its name is taken"}) {
		t.Fatalf("import of the export = %+v", res)
	}
	if r := g.get("/api/x", bearer(mover.Key)...); r.status != http.StatusOK {
		t.Fatalf("the key moved twice: %d", r.status)
	}
}

// A key whose creation on Redis was cut short after its name was claimed
// (listed, its id in the store, its secret not yet indexed, so refused) is
// finished by importing it again, not skipped for its id.
func TestImportFinishesAKeyCutShort(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, protectedSite)
	k := generate(t, "--name", "half-made", "--roles", "upload")
	file := filepath.Join(t.TempDir(), "export.json")
	mustCLI(t, "export", file)
	// the state such a creation leaves (redisstore.CreateKey): its record
	// still marked, its hash not indexed
	rdb, ctx := srv.Client(t), context.Background()
	if err := rdb.Del(ctx, "keygate:h:"+apikey.Sum(k.Key).String()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, "keygate:{k:"+k.ID+"}", "t", "cut-short").Err(); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusUnauthorized, "Invalid API key")

	var res importResult
	mustJSON(t, mustCLI(t, "import", file, "--json"), &res)
	if !slices.Equal(res.Imported, []string{"half-made"}) {
		t.Fatalf("import = %+v, want half-made imported", res)
	}
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("the finished key: %d", r.status)
	}
}

// Into the embedded store an import creates its keys in one write of the
// file (an import of 10,000 keys: BenchmarkImport10000), each skipped for
// its own reason, and the created keys' secrets work at once.
func TestImportIntoTheEmbeddedStore(t *testing.T) {
	g := startGateway(t, "", protectedSite)
	a := generate(t, "--name", "emb-a", "--roles", "upload")
	generate(t, "--name", "emb-b")
	generate(t, "--name", "emb-c")
	file := filepath.Join(t.TempDir(), "export.json")
	mustCLI(t, "export", file)
	mustCLI(t, "delete", "emb-a")
	mustCLI(t, "delete", "emb-b")
	generate(t, "--name", "emb-b") // another key of its name
	wantProblem(t, g.get("/api/x", bearer(a.Key)...), http.StatusUnauthorized, "Invalid API key")

	var res importResult
	mustJSON(t, mustCLI(t, "import", file, "--json"), &res)
	if !slices.Equal(res.Imported, []string{"emb-a"}) || !slices.Contains(res.Skipped, skippedKey{"emb-b", "its name is taken"}) ||
		!slices.Contains(res.Skipped, skippedKey{"emb-c", "a key with its id is in the store"}) {
		t.Fatalf("import = %+v", res)
	}
	if r := g.get("/api/x", bearer(a.Key)...); r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != a.ID {
		t.Fatalf("the imported key: %d, upstream saw %v", r.status, r.upstreamSaw)
	}

	// created and last used in the future (another machine's clock ahead):
	// now, else its last use would never be recorded again
	ahead := filepath.Join(t.TempDir(), "ahead.json")
	body := `{"version": 1, "keys": [{"id": "00000000000000aa", "name": "ahead", "prefix": "sk_0000…", "sha256": "` + strings.Repeat("ef", 32) +
		`", "enabled": true, "created_at": "9999-01-01T00:00:00Z", "last_used_at": "9999-01-01T00:00:00Z"}]}`
	if err := os.WriteFile(ahead, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	mustCLI(t, "import", ahead)
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	i := slices.IndexFunc(listed, func(v keyView) bool { return v.Name == "ahead" })
	if i < 0 || listed[i].LastUsedAt == nil || listed[i].CreatedAt.Before(before) || listed[i].CreatedAt.After(time.Now()) || !listed[i].LastUsedAt.Equal(listed[i].CreatedAt) {
		t.Fatalf("a key from the future: %+v", listed)
	}
}

// An import is checked whole before anything is created: a bad key (here
// its id not keygate's shape, which names Redis keys) or another version
// is a 400 that creates nothing.
func TestImportRefusesBadInputWhole(t *testing.T) {
	startRedisGateway(t, "", protectedSite)
	good := `{"id": "0123456789abcdef", "name": "fine", "prefix": "sk_0123…", "sha256": "` + strings.Repeat("ab", 32) + `", "enabled": true, "created_at": "2026-01-01T00:00:00Z", "revision": 3}`
	for body, want := range map[string]string{
		`{"version": 1, "keys": [` + good + `, {"id": "x:{k}", "name": "bad", "sha256": "` + strings.Repeat("cd", 32) + `", "enabled": true, "created_at": "2026-01-01T00:00:00Z"}]}`: `keys[1]: key "bad": id "x:{k}" is not 16 lowercase hex digits`,
		`{"version": 1, "keys": [` + good + `, {"id": "0123456789abcdee", "name": "bad", "sha256": "short", "enabled": true, "created_at": "2026-01-01T00:00:00Z"}]}`:                 `keys[1]: key "bad" has a malformed sha256`,
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"rate_limit": 5, "enabled"`, 1) + `]}`:                                                                       `rate limit 5 per 0 ms`,
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"expires_at": "9999-12-31T23:30:00-01:00", "enabled"`, 1) + `]}`:                                             `expires_at 10000-01-01T00:30:00Z is not after 1970-01-01T00:00:00Z and before the year 10000 (UTC)`,
		`{"version": 1, "keys": [` + strings.Replace(good, `2026-01-01T00:00:00Z`, `0000-01-01T00:00:00+00:01`, 1) + `]}`:                                                             `created_at`,
		// the zero time, which Go's JSON writes for none: a required member
		`{"version": 1, "keys": [` + strings.Replace(good, `2026-01-01T00:00:00Z`, `0001-01-01T00:00:00Z`, 1) + `]}`: `created_at 0001-01-01T00:00:00Z is not after 1970`,
		`{"version": 2, "keys": [` + good + `]}`:             "version 2: this keygate imports version 1",
		`{"version": 1, "keys": [` + good + `], "extra": 1}`: `unknown field "extra"`,
		// Redis keeps 0 ms as no expiry: expired would be never expiring
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"expires_at": "1970-01-01T00:00:00Z", "enabled"`, 1) + `]}`: `expires_at 1970-01-01T00:00:00Z is not after 1970-01-01T00:00:00Z`,
		// each key is read as strictly as the body: "expires" would import
		// it without expiry, a missing "enabled" disabled
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"expires": "2020-01-01T00:00:00Z", "enabled"`, 1) + `]}`: `keys[0]: invalid JSON body: unknown field "expires"`,
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"Enabled"`, 1) + `]}`:                                    `keys[0]: invalid JSON body: unknown field "Enabled"`,
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled": true,`, ``, 1) + `]}`:                                      `keys[0]: no "enabled"`,
		`{"version": 1, "keys": [` + strings.Replace(good, `"name": "fine",`, `"name": "fine", "name": "twice",`, 1) + `]}`:       `keys[0]: invalid JSON body: field "name" given twice`,
		`{"version": 1, "keys": [null]}`: `keys[0]: no "id"`,
		`{"version": 1, "keys": [5]}`:    `keys[0]: invalid JSON body`,
		// 2^58 + 60,000 ms would wrap around to a minute
		`{"version": 1, "keys": [` + strings.Replace(good, `"enabled"`, `"rate_limit": 10, "rate_window_ms": 288230376151771744, "enabled"`, 1) + `]}`: `rate_window_ms 288230376151771744 is not between 0 and`,
		// an export names each key once
		`{"version": 1, "keys": [` + good + `, ` + strings.Replace(good, `"fine"`, `"other"`, 1) + `]}`:                                                                                            `keys[1]: key "other" has the id of a key before it`,
		`{"version": 1, "keys": [` + good + `, ` + strings.Replace(strings.Replace(good, `"fine"`, `"other"`, 1), "0123456789abcdef", "0123456789abcdee", 1) + `]}`:                                `keys[1]: key "other" has the sha256 of a key before it`,
		`{"version": 1, "keys": [` + good + `, ` + strings.Replace(strings.Replace(good, strings.Repeat("ab", 32), strings.Repeat("cd", 32), 1), "0123456789abcdef", "0123456789abcdee", 1) + `]}`: `keys[1]: key "fine" has the name of a key before it`,
	} {
		file := filepath.Join(t.TempDir(), "import.json")
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := cli(t, "import", file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("import %s: %v (%q), want %q", body, err, out, want)
		}
	}
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	if len(listed) != 0 {
		t.Fatalf("refused imports created %+v", listed)
	}
	if out, err := cli(t, "import", "/nonexistent/keys.json"); err == nil {
		t.Errorf("a missing file: %q", out)
	}
}

// A gateway moving to Redis warns of the keys the embedded store holds,
// which Redis does not serve until they are imported: else every client
// gets 401 with nothing in the log to say why.
func TestMovingToRedisWarnsOfEmbeddedKeys(t *testing.T) {
	dir := t.TempDir()
	core, logs := observer.New(zap.WarnLevel)
	a := &App{logger: zap.New(core)}
	a.warnOfEmbeddedKeys(filepath.Join(dir, "none.json")) // no file: nothing to say
	empty := filepath.Join(dir, "empty.json")
	full := filepath.Join(dir, "keys.json")
	for path, body := range map[string]string{
		empty: `{"version": 1, "keys": []}`,
		full:  `{"version": 1, "keys": [{"id": "0123456789abcdef", "name": "k", "sha256": "` + strings.Repeat("ab", 32) + `"}]}`,
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		a.warnOfEmbeddedKeys(path)
	}
	if logs.Len() != 1 || logs.All()[0].ContextMap()["file"] != full || logs.All()[0].ContextMap()["keys"] != int64(1) {
		t.Fatalf("logged %+v, want one warning of keys.json's key", logs.All())
	}
}
