package keygate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/caddymodule/store"
)

// Moving keys between stores: GET /keygate/export answers every key with
// its hash (store.Export, the embedded store's keys.json format), and POST
// /keygate/import creates the keys of such a body in this gateway's store,
// with their ids and hashes: their secrets keep working. So keys move from
// the embedded store to Redis (import its keys.json), from one Redis to
// another, or into a backup.

// maxImportBody bounds an import: about 200,000 keys.
const maxImportBody = 64 << 20

// importResult is the answer to an import.
type importResult struct {
	Imported []string     `json:"imported"` // names
	Skipped  []skippedKey `json:"skipped"`
}

// skippedKey is a key of an import that was not created, and why.
type skippedKey struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// exportKeys answers GET /keygate/export.
func exportKeys(ctx context.Context, s store.Store, r *http.Request) (int, any, error) {
	if r.Method != http.MethodGet {
		return 0, nil, methodNotAllowed(r, "GET")
	}
	keys, err := s.Keys(ctx)
	if err != nil {
		return 0, nil, err
	}
	out := store.Export{Version: store.ExportVersion, Keys: make([]store.ExportedKey, 0, len(keys))}
	for _, k := range keys {
		out.Keys = append(out.Keys, store.Exported(k))
	}
	return http.StatusOK, out, nil
}

// importKeys answers POST /keygate/import. Every key is checked before
// any is created, as a creation checks it (a 400 names the first that is
// not valid, or that shares an id, hash or name with one before it). A key
// whose hash, id or name the store has already is skipped, so an import
// cut short (the store failed) is finished by running it again.
func importKeys(ctx context.Context, s *sharedStore, r *http.Request) (int, any, error) {
	if r.Method != http.MethodPost {
		return 0, nil, methodNotAllowed(r, "POST")
	}
	body, err := readBodyUpTo(r, maxImportBody)
	if err != nil {
		return 0, nil, err
	}
	// store.Export, its keys checked one by one as strictly as the body
	var in struct {
		Version int               `json:"version"`
		Keys    []json.RawMessage `json:"keys"`
	}
	if err := decodeObject(body, &in); err != nil {
		return 0, nil, err
	}
	if in.Version != store.ExportVersion {
		return 0, nil, badRequest("version %d: this keygate imports version %d (GET /keygate/export, or the embedded store's keys.json)", in.Version, store.ExportVersion)
	}
	keys, err := importedKeys(in.Keys, time.Now())
	if err != nil {
		return 0, nil, err
	}

	existing, err := s.Keys(ctx)
	if err != nil {
		return 0, nil, err
	}
	ids := make(map[string]bool, len(existing))
	for _, k := range existing {
		ids[k.ID] = true
	}
	res := importResult{Imported: []string{}, Skipped: []skippedKey{}}
	var fresh []store.Key
	for _, k := range keys {
		switch _, err := s.KeyIDByHash(ctx, k.Hash); {
		case err == nil && ids[k.ID]:
			res.Skipped = append(res.Skipped, skippedKey{k.Name, "a key with its id is in the store"})
		case err == nil:
			res.Skipped = append(res.Skipped, skippedKey{k.Name, "a key with its secret is in the store"})
		case errors.Is(err, store.ErrNotFound):
			// an id in the store without this secret indexed is another
			// key's, refused by CreateKey (store.ErrIDTaken), or this key's
			// creation cut short on Redis, which CreateKey finishes
			fresh = append(fresh, k)
		default:
			return 0, nil, importCutShort(res, len(keys), err)
		}
	}
	refused, created, err := createKeys(ctx, s.Store, fresh)
	for j, k := range fresh[:created] {
		switch {
		case errors.Is(refused[j], store.ErrNameTaken):
			res.Skipped = append(res.Skipped, skippedKey{k.Name, "its name is taken"})
			continue
		case errors.Is(refused[j], store.ErrIDTaken): // under another secret (rotated since), or by an import beside this one
			res.Skipped = append(res.Skipped, skippedKey{k.Name, "a key with its id is in the store"})
			continue
		}
		res.Imported = append(res.Imported, k.Name)
		// refused here until now (clients of a store just moved): in at
		// once, not after the negative cache's second (other gateways'
		// caches forget it within that)
		s.keys.forgetUnknown(k.Hash)
	}
	if err != nil {
		return 0, nil, importCutShort(res, len(keys), err)
	}
	return http.StatusOK, res, nil
}

// exportedMembers are the members of a key that every export and
// keys.json write: a key without one is no export's (a misspelt "enabled"
// would import the key disabled; "expires" for "expires_at", without
// expiry, is refused as unknown).
var exportedMembers = []string{"id", "name", "sha256", "enabled", "created_at"}

// importedKeys are the keys of an import as the store will hold them, or a
// 400 naming the first that is not valid or repeats an id, hash or name.
func importedKeys(in []json.RawMessage, now time.Time) ([]store.Key, error) {
	keys := make([]store.Key, 0, len(in))
	seen := store.NewKeySet(len(in))
	for i, raw := range in {
		var e store.ExportedKey
		if err := decodeObject(raw, &e); err != nil {
			return nil, badRequest("keys[%d]: %v", i, err)
		}
		var members map[string]json.RawMessage
		_ = json.Unmarshal(raw, &members) // an object: decodeObject took it
		for _, m := range exportedMembers {
			if _, ok := members[m]; !ok {
				return nil, badRequest("keys[%d]: no %q: every key of an export has %s", i, m, strings.Join(exportedMembers, ", "))
			}
		}
		k, err := importedKey(e, now)
		if err != nil {
			return nil, badRequest("keys[%d]: %v", i, err)
		}
		if repeats := seen.Add(k); repeats != "" {
			return nil, badRequest("keys[%d]: key %q has the %s of a key before it: an export names each key once", i, k.Name, repeats)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// createKeys creates keys in st, each as CreateKey would: refused[j] is
// keys[j]'s own refusal (store.ErrNameTaken, store.ErrIDTaken). It stops at the first
// failure of the store, created being how many keys it got through.
func createKeys(ctx context.Context, st store.Store, keys []store.Key) (refused []error, created int, err error) {
	if len(keys) == 0 {
		return nil, 0, nil
	}
	if batch, ok := st.(store.BatchCreator); ok {
		if refused, err = batch.CreateKeys(ctx, keys); err != nil {
			return nil, 0, err
		}
		return refused, len(keys), nil
	}
	refused = make([]error, len(keys))
	for j, k := range keys {
		if err := ctx.Err(); err != nil {
			return refused, j, err
		}
		switch err := st.CreateKey(ctx, k); {
		case errors.Is(err, store.ErrNameTaken), errors.Is(err, store.ErrIDTaken):
			refused[j] = err
		case err != nil:
			return refused, j, err
		}
	}
	return refused, len(keys), nil
}

// importedKey is e as the store will hold it, checked as a creation would
// check it, and with an id of keygate's shape, which names the key's
// records in Redis. A creation or last use after now (another machine's
// clock ahead) is taken as now: one in the future would keep the key's
// last use from ever being recorded.
func importedKey(e store.ExportedKey, now time.Time) (store.Key, error) {
	k, err := e.Key()
	if err != nil {
		return store.Key{}, err
	}
	if !validKeyID(k.ID) {
		return store.Key{}, fmt.Errorf("key %q: id %q is not 16 lowercase hex digits", k.Name, k.ID)
	}
	if err := validName(k.Name); err != nil {
		return store.Key{}, err
	}
	if err := validLabel("owner", k.Owner); err != nil {
		return store.Key{}, err
	}
	// the display prefix ends in "…": printable, not ASCII
	if len(k.Prefix) > maxNameLength || !utf8.ValidString(k.Prefix) || strings.IndexFunc(k.Prefix, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return store.Key{}, fmt.Errorf("key %q: prefix %q: printable text of at most %d bytes only", k.Name, k.Prefix, maxNameLength)
	}
	for _, role := range k.Roles {
		if !validRole(role) {
			return store.Key{}, fmt.Errorf("key %q: role %q: use lowercase letters, digits and _ . : - only", k.Name, role)
		}
	}
	if p := k.RateLimit; p.Limit != 0 || p.Window != 0 {
		// as the Caddyfile's rate_limit is checked
		if err := (&Rate{Requests: p.Limit, Window: caddy.Duration(p.Window)}).validate("rate limit"); err != nil {
			return store.Key{}, fmt.Errorf("key %q: rate limit %d per %d ms: %v", k.Name, p.Limit, p.Window.Milliseconds(), err)
		}
	}
	// in UTC and to the millisecond, as the stores keep them: a time whose
	// UTC year is past 9999 (9999-12-31T23:30:00-01:00) would be stored,
	// and then break every listing and export, which JSON cannot encode;
	// and Redis keeps 0 ms since 1970 as "none" (an expired key would
	// never expire)
	for what, t := range map[string]*time.Time{"expires_at": &k.ExpiresAt, "created_at": &k.CreatedAt, "last_used_at": &k.LastUsedAt} {
		if t.IsZero() && what != "created_at" { // created_at is required: year 1 is no time of creation
			continue
		}
		*t = t.UTC().Truncate(time.Millisecond)
		if t.UnixMilli() <= 0 || t.Year() > 9999 {
			return store.Key{}, fmt.Errorf("key %q: %s %s is not after 1970-01-01T00:00:00Z and before the year 10000 (UTC)", k.Name, what, t.Format(time.RFC3339Nano))
		}
		if what != "expires_at" && t.After(now) {
			*t = now.UTC().Truncate(time.Millisecond)
		}
	}
	return k, nil
}

// validKeyID is the shape of the ids createKey makes.
func validKeyID(id string) bool {
	return len(id) == 2*keyIDBytes && allBytes(id, func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' })
}

// importCutShort is the error of an import the store failed in the middle of.
func importCutShort(res importResult, total int, err error) error {
	return adminError{status: http.StatusServiceUnavailable, msg: fmt.Sprintf(
		"key store unavailable: %v; %d of %d keys imported, %d skipped: import again (the keys already in the store are skipped)",
		err, len(res.Imported), total, len(res.Skipped))}
}
