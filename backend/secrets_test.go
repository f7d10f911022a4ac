package backend_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/backend"
	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/redisstore"
)

// createSecret posts body and returns the linkId.
func (e *env) createSecret(body string, opts ...reqOpt) (string, map[string]any) {
	e.t.Helper()
	resp, out := e.postJSON("/api/v1/secrets", body, opts...)
	if resp.StatusCode != http.StatusCreated {
		e.t.Fatalf("create secret: %d %s", resp.StatusCode, out)
	}
	m := decode(e.t, out)
	id, _ := m["linkId"].(string)
	return id, m
}

// The SecLink doc's curl/Python request, exactly: "..." is not base64 and
// must still be accepted, since the backend never looks inside the blob.
func TestSecretsDocExample(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		before := time.Now()
		id, m := e.createSecret(`{"encryptedBlob":"...","iv":"...","expiryType":"view_once"}`,
			header("Authorization", "Bearer sk_live_xxx"), forwarded("https", "seclink.local"))
		if keysOf(m) != "expiresAt,linkId,shareUrl" || len(id) != 12 || strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") != "" {
			t.Fatalf("response %v", m)
		}
		if m["shareUrl"] != "https://seclink.local/"+id { // the doc's https://seclink.local/A1b2C3d4E5f6
			t.Fatalf("shareUrl %v", m["shareUrl"])
		}
		exp := time.UnixMilli(int64(m["expiresAt"].(float64)))
		if exp.Before(before.Add(backend.ViewOnceLifetime-time.Second)) || exp.After(time.Now().Add(backend.ViewOnceLifetime)) {
			t.Fatalf("expiresAt %v", exp)
		}

		resp, out := e.get("/api/v1/secrets/"+id, anonymous)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("read: %d %s", resp.StatusCode, out)
		}
		got := decode(t, out)
		if keysOf(got) != "encryptedBlob,expiryType,iv" || got["encryptedBlob"] != "..." || got["iv"] != "..." || got["expiryType"] != "view_once" {
			t.Fatalf("read: %s", out)
		}
		for range 2 {
			resp, out = e.get("/api/v1/secrets/"+id, anonymous)
			wantProblem(t, resp, out, http.StatusGone, "Secret was previously viewed and permanently destroyed")
		}
	})
}

func TestSecretsExpiryTypes(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		for typ, ttl := range map[string]time.Duration{"1hour": time.Hour, "24hours": 24 * time.Hour, "7days": 7 * 24 * time.Hour} {
			before := time.Now()
			id, m := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"` + typ + `"}`)
			exp := time.UnixMilli(int64(m["expiresAt"].(float64)))
			if exp.Before(before.Add(ttl-time.Second)) || exp.After(time.Now().Add(ttl)) {
				t.Fatalf("%s: expiresAt %v", typ, exp)
			}
			for range 2 { // readable until it expires
				resp, out := e.get("/api/v1/secrets/"+id, anonymous)
				if resp.StatusCode != 200 || decode(t, out)["expiryType"] != typ {
					t.Fatalf("%s: %d %s", typ, resp.StatusCode, out)
				}
			}
		}
	})
}

func TestSecretsNotFound(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		for _, id := range []string{"A1b2C3d4E5f6", "short", "A1b2C3d4E5f6A", "A1b2C3d4E5f%21", "............"} {
			resp, out := e.get("/api/v1/secrets/"+id, anonymous)
			wantProblem(t, resp, out, http.StatusNotFound, "Secret does not exist or has already been viewed")
		}
	})
}

func TestSecretsCreateErrors(t *testing.T) {
	eachStoreOpts(t, envOpts{maxSecret: 1024}, func(t *testing.T, e *env) {
		big := strings.Repeat("A", 1025)
		for _, c := range []struct {
			body   string
			status int
		}{
			{`{"iv":"x","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"","iv":"x","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"x","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"x","iv":"","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"x","iv":"x"}`, 400},
			{`{"encryptedBlob":"x","iv":"x","expiryType":"forever"}`, 400},
			{`{"encryptedBlob":"x","iv":"x","expiryType":"VIEW_ONCE"}`, 400},
			{`{"encryptedBlob":42,"iv":"x","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"x","iv":"` + strings.Repeat("i", 1025) + `","expiryType":"view_once"}`, 400},
			{`{"encryptedBlob":"x","iv":"x","expiryType":"view_once","passcodeHash":"has space"}`, 400},
			{`{"encryptedBlob":"x","iv":"x","expiryType":"view_once","passcodeHash":"` + strings.Repeat("h", 513) + `"}`, 400},
			{`not json`, 400},
			{``, 400},
			{`{"encryptedBlob":"` + big + `","iv":"x","expiryType":"view_once"}`, 413},
			{`{"encryptedBlob":"x","iv":"x","expiryType":"view_once","pad":"` + strings.Repeat("p", 40<<10) + `"}`, 413},
		} {
			resp, out := e.postJSON("/api/v1/secrets", c.body)
			want := "Invalid payload or missing fields"
			if c.status == 413 {
				want = "Secret too large"
			}
			if resp.StatusCode != c.status {
				t.Fatalf("%.80s: %d %s, want %d", c.body, resp.StatusCode, out, c.status)
			}
			wantProblem(t, resp, out, c.status, want)
		}
		// Exactly at the limit is fine.
		e.createSecret(`{"encryptedBlob":"` + big[1:] + `","iv":"x","expiryType":"1hour"}`)
	})
}

func TestSecretsPasscode(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
		id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once","passcodeHash":"` + hash + `"}`)
		path := "/api/v1/secrets/" + id
		for i := range 2 { // none of these burn it (4 wrong: within the limit)
			resp, out := e.get(path, anonymous)
			wantProblem(t, resp, out, http.StatusUnauthorized, "Passcode required")
			resp, out = e.get(path, anonymous, header("X-Passcode-Hash", hash[:63]+"9"))
			wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
			resp, out = e.get(path+"?passcodeHash=wrong"+string(rune('a'+i)), anonymous)
			wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		}
		resp, out := e.get(path, anonymous, header("X-Passcode-Hash", hash))
		if resp.StatusCode != 200 || decode(t, out)["encryptedBlob"] != "ZW5j" {
			t.Fatalf("right passcode: %d %s", resp.StatusCode, out)
		}
		resp, out = e.get(path, anonymous, header("X-Passcode-Hash", hash))
		wantProblem(t, resp, out, http.StatusGone, "Secret was previously viewed and permanently destroyed")

		// The query parameter works as well as the header.
		id, _ = e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"24hours","passcodeHash":"` + hash + `"}`)
		resp, out = e.get("/api/v1/secrets/"+id+"?"+url.Values{"passcodeHash": {hash}}.Encode(), anonymous)
		if resp.StatusCode != 200 {
			t.Fatalf("query passcode: %d %s", resp.StatusCode, out)
		}
		// A SHA-256 in hex matches in either case (the viewer sends lower
		// case; .NET's Convert.ToHexString writes upper case); other
		// passcode hashes exactly.
		id, _ = e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"24hours","passcodeHash":"` + strings.ToUpper(hash) + `"}`)
		if resp, out = e.get("/api/v1/secrets/"+id, anonymous, header("X-Passcode-Hash", hash)); resp.StatusCode != 200 {
			t.Fatalf("upper-case hash, lower-case passcode: %d %s", resp.StatusCode, out)
		}
		id, _ = e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"24hours","passcodeHash":"Secret-Pass"}`)
		resp, out = e.get("/api/v1/secrets/"+id, anonymous, header("X-Passcode-Hash", "secret-pass"))
		wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		// An empty passcodeHash on create means no passcode.
		id, _ = e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"1hour","passcodeHash":""}`)
		if resp, out = e.get("/api/v1/secrets/"+id, anonymous); resp.StatusCode != 200 {
			t.Fatalf("empty passcode: %d %s", resp.StatusCode, out)
		}
	})
}

// Of N concurrent readers of a view_once secret exactly one gets it; the
// others get 410.
func TestSecretsViewOnceRace(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"c2VjcmV0","iv":"aXY=","expiryType":"view_once"}`)
		const n = 24
		var (
			mu    sync.Mutex
			count = map[int]int{}
			blobs int
		)
		atOnce(n, func(int) {
			req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/secrets/"+id, nil)
			req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
			req.Header.Set("X-Keygate-Anonymous", "true")
			resp, err := e.client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			count[resp.StatusCode]++
			if strings.Contains(string(body), "c2VjcmV0") {
				blobs++
			}
		})
		if count[200] != 1 || count[410] != n-1 || blobs != 1 {
			t.Fatalf("statuses %v, %d bodies with the blob; want one 200 and %d 410", count, blobs, n-1)
		}
	})
}

func TestSecretsReport(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once"}`)
		resp, out := e.do("POST", "/api/v1/secrets/"+id+"/report", nil, "", anonymous,
			header("X-Forwarded-For", "198.51.100.1, 203.0.113.7"))
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("empty report: %d %s", resp.StatusCode, out)
		}
		resp, out = e.postJSON("/api/v1/secrets/"+id+"/report", `{"reason":"  phishing  "}`)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("report with reason: %d %s", resp.StatusCode, out)
		}
		// Reporting does not touch the secret.
		if resp, out = e.get("/api/v1/secrets/"+id, anonymous); resp.StatusCode != 200 {
			t.Fatalf("read after report: %d %s", resp.StatusCode, out)
		}
		// A read (or never existing) secret can still be reported.
		if resp, out = e.postJSON("/api/v1/secrets/"+id+"/report", `{}`); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("report after read: %d %s", resp.StatusCode, out)
		}
		reports, err := e.st.Reports(context.Background(), 10)
		if err != nil || len(reports) != 3 {
			t.Fatalf("stored reports: %+v, %v", reports, err)
		}
		r0, r1 := reports[0], reports[1]
		if r0.SecretID != id || r0.Reporter != "anonymous" || r0.RemoteIP != "203.0.113.7" || r0.Reason != "" || r0.CreatedAt.IsZero() {
			t.Fatalf("report 0: %+v", r0)
		}
		if r1.Reporter != "key-1" || r1.Reason != "phishing" {
			t.Fatalf("report 1: %+v", r1)
		}

		for _, c := range []struct {
			path, body string
			status     int
			err        string
		}{
			{"/api/v1/secrets/short/report", `{}`, 404, "Secret does not exist or has already been viewed"},
			{"/api/v1/secrets/" + id + "/report", `not json`, 400, "Invalid payload or missing fields"},
			{"/api/v1/secrets/" + id + "/report", `{"reason":42}`, 400, "Invalid payload or missing fields"},
			{"/api/v1/secrets/" + id + "/report", `{"reason":"` + strings.Repeat("r", 2001) + `"}`, 400, "Invalid payload or missing fields"},
			{"/api/v1/secrets/" + id + "/report", `{"reason":"` + strings.Repeat("r", 30000) + `"}`, 413, "Request body too large"},
		} {
			resp, out := e.postJSON(c.path, c.body)
			wantProblem(t, resp, out, c.status, c.err)
		}
		// the longest reason, escaped as Python's json= sends it (a
		// surrogate pair, 12 bytes, a character): 24 KB, accepted
		escaped := `{"reason": "` + strings.Repeat(`\ud83d\ude00`, maxReasonChars) + `"}`
		if resp, out := e.postJSON("/api/v1/secrets/"+id+"/report", escaped); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("a %d-byte report of %d escaped characters: %d %s", len(escaped), maxReasonChars, resp.StatusCode, out)
		}
		// behind a trusted proxy the last X-Forwarded-For entry is that
		// proxy: the gateway's X-Keygate-Client-Ip names the client
		resp, out = e.do("POST", "/api/v1/secrets/"+id+"/report", nil, "", anonymous,
			header("X-Keygate-Client-Ip", "198.51.100.1"), header("X-Forwarded-For", "198.51.100.1, 10.0.0.5"))
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("report behind a proxy: %d %s", resp.StatusCode, out)
		}
		if newest, err := e.st.Reports(context.Background(), 1); err != nil || len(newest) != 1 || newest[0].RemoteIP != "198.51.100.1" {
			t.Fatalf("the report behind a proxy: %+v, %v; want it from 198.51.100.1", newest, err)
		}
	})
}

// TestSecretsExpireOnRead: an expired secret is 404 even though no sweep
// has run. The embedded store takes a fake clock, so no waiting.
func TestSecretsExpireOnRead(t *testing.T) {
	e, clock, set := envOnAClock(t)

	hour, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"1hour"}`)
	once, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once"}`)
	if resp, _ := e.get("/api/v1/secrets/" + hour); resp.StatusCode != 200 {
		t.Fatalf("fresh: %d", resp.StatusCode)
	}
	set(clock().Add(time.Hour + time.Millisecond))
	resp, out := e.get("/api/v1/secrets/" + hour)
	wantProblem(t, resp, out, http.StatusNotFound, "Secret does not exist or has already been viewed")
	if resp, _ := e.get("/api/v1/secrets/" + once); resp.StatusCode != 200 { // lives 7 days
		t.Fatalf("view_once after an hour: %d", resp.StatusCode)
	}
	set(clock().Add(8 * 24 * time.Hour)) // past the tombstone too
	resp, out = e.get("/api/v1/secrets/" + once)
	wantProblem(t, resp, out, http.StatusNotFound, "Secret does not exist or has already been viewed")
}

// passcodeHash is the SHA-256 of "test": the right passcode of the
// lockout tests.
// maxReasonChars is the longest reason a report may give (in characters).
const maxReasonChars = 2000

const passcodeHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// wrongGuess is the ith wrong passcode.
func wrongGuess(i int) reqOpt {
	return header("X-Passcode-Hash", fmt.Sprintf("%064x", i+1))
}

// wantLocked checks a 429 for too many wrong passcodes and returns its
// Retry-After, whole seconds from 1 to the window.
func wantLocked(t *testing.T, resp *http.Response, body []byte) int {
	t.Helper()
	wantProblem(t, resp, body, http.StatusTooManyRequests, "Too many wrong passcodes. Try again later.")
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs < 1 || secs > int(backend.PasscodeAttemptWindow/time.Second) {
		t.Fatalf("Retry-After %q, want whole seconds from 1 to %v", resp.Header.Get("Retry-After"), backend.PasscodeAttemptWindow)
	}
	return secs
}

// After MaxPasscodeAttempts wrong passcodes a secret takes no passcode, not
// even the right one, and is not burned by the refusals.
func TestSecretsPasscodeLockout(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once","passcodeHash":"` + passcodeHash + `"}`)
		path := "/api/v1/secrets/" + id
		for i := range backend.MaxPasscodeAttempts {
			resp, out := e.get(path, anonymous, wrongGuess(i))
			wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		}
		resp, out := e.get(path, anonymous, header("X-Passcode-Hash", passcodeHash))
		if secs := wantLocked(t, resp, out); secs < int((backend.PasscodeAttemptWindow-time.Minute)/time.Second) {
			t.Fatalf("Retry-After %d right after the lockout, want about %v", secs, backend.PasscodeAttemptWindow)
		}
		resp, out = e.get(path+"?passcodeHash="+passcodeHash, anonymous)
		wantLocked(t, resp, out)
		resp, out = e.get(path, anonymous, wrongGuess(99))
		wantLocked(t, resp, out)
		// Without a passcode the answer is still 401: it compares nothing.
		resp, out = e.get(path, anonymous)
		wantProblem(t, resp, out, http.StatusUnauthorized, "Passcode required")
	})
}

// The lockout ends with its window, on the embedded store's fake clock:
// Retry-After counts down to it, and the view_once secret refused meanwhile
// is then read with the right passcode.
func TestSecretsPasscodeLockoutEnds(t *testing.T) {
	e, clock, set := envOnAClock(t)

	id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once","passcodeHash":"` + passcodeHash + `"}`)
	path := "/api/v1/secrets/" + id
	begun := clock().Truncate(time.Millisecond) // the store keeps the window in ms
	set(begun)
	for i := range backend.MaxPasscodeAttempts {
		resp, out := e.get(path, wrongGuess(i))
		wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
	}
	right := header("X-Passcode-Hash", passcodeHash)
	window := backend.PasscodeAttemptWindow
	for _, c := range []struct {
		at    time.Duration // since the first wrong passcode
		retry string
	}{
		{0, strconv.Itoa(int(window / time.Second))},
		{time.Minute + 300*time.Millisecond, strconv.Itoa(int(window/time.Second) - 60)}, // 839.7 s: rounded up
		{window - 500*time.Millisecond, "1"},
		{window - time.Millisecond, "1"},
	} {
		set(begun.Add(c.at))
		resp, out := e.get(path, right)
		wantLocked(t, resp, out)
		if got := resp.Header.Get("Retry-After"); got != c.retry {
			t.Fatalf("%v into the window: Retry-After %s, want %s", c.at, got, c.retry)
		}
	}
	set(begun.Add(window))
	resp, out := e.get(path, right)
	if resp.StatusCode != http.StatusOK || decode(t, out)["encryptedBlob"] != "ZW5j" {
		t.Fatalf("right passcode once the window ended: %d %s", resp.StatusCode, out)
	}
}

// The right passcode gives its attempt back: the readers of a secret that
// may be read many times never lock it, even with wrong guesses held.
func TestSecretsPasscodeRightNeverLocks(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"7days","passcodeHash":"` + passcodeHash + `"}`)
		path := "/api/v1/secrets/" + id
		for i := range backend.MaxPasscodeAttempts - 1 {
			resp, out := e.get(path, anonymous, wrongGuess(i))
			wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		}
		for i := range 20 {
			resp, out := e.get(path, anonymous, header("X-Passcode-Hash", passcodeHash))
			if resp.StatusCode != http.StatusOK || decode(t, out)["encryptedBlob"] != "ZW5j" {
				t.Fatalf("read %d with the right passcode: %d %s", i+1, resp.StatusCode, out)
			}
		}
		// The wrong ones still count: one more is taken, then none.
		resp, out := e.get(path, anonymous, wrongGuess(50))
		wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		resp, out = e.get(path, anonymous, wrongGuess(51))
		wantLocked(t, resp, out)
		resp, out = e.get(path, anonymous, header("X-Passcode-Hash", passcodeHash))
		wantLocked(t, resp, out)
	})
}

// Of many concurrent wrong guesses, from as many addresses, at most
// MaxPasscodeAttempts are compared; the others get 429.
func TestSecretsPasscodeGuessRace(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"view_once","passcodeHash":"` + passcodeHash + `"}`)
		const n = 50
		var (
			mu    sync.Mutex
			count = map[string]int{}
		)
		atOnce(n, func(i int) {
			req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/secrets/"+id, nil)
			req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
			req.Header.Set("X-Keygate-Anonymous", "true")
			req.Header.Set("X-Forwarded-For", fmt.Sprintf("2001:db8:%x::1", i))
			wrongGuess(i)(req)
			resp, err := e.client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			var p struct{ Error string }
			err = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			count[fmt.Sprintf("%d %s", resp.StatusCode, p.Error)]++
			if err != nil {
				t.Error(err)
			}
		})
		wrong, locked := count["401 Wrong passcode"], count["429 Too many wrong passcodes. Try again later."]
		if wrong != backend.MaxPasscodeAttempts || locked != n-backend.MaxPasscodeAttempts {
			t.Fatalf("answers %v; want %d Wrong passcode and the other %d 429", count, backend.MaxPasscodeAttempts, n-backend.MaxPasscodeAttempts)
		}
		resp, out := e.get("/api/v1/secrets/"+id, anonymous, header("X-Passcode-Hash", passcodeHash))
		wantLocked(t, resp, out)
	})
}

// Only a passcode compared costs an attempt: reads of a secret without a
// passcode (whatever passcode they send) make no reservation, and asking
// for one with a passcode without sending any costs nothing; nor does
// another secret's lockout touch them.
func TestSecretsPasscodeAttemptsOnlyForGuesses(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		plain, _ := e.createSecret(`{"encryptedBlob":"cGxhaW4=","iv":"aXY=","expiryType":"24hours"}`)
		locked, _ := e.createSecret(`{"encryptedBlob":"ZW5j","iv":"aXY=","expiryType":"24hours","passcodeHash":"` + passcodeHash + `"}`)
		readPlain := func() {
			t.Helper()
			for i := range 10 {
				resp, out := e.get("/api/v1/secrets/"+plain, anonymous, wrongGuess(i))
				if resp.StatusCode != http.StatusOK || decode(t, out)["encryptedBlob"] != "cGxhaW4=" {
					t.Fatalf("secret without a passcode: %d %s", resp.StatusCode, out)
				}
			}
		}
		readPlain()
		for range 10 {
			resp, out := e.get("/api/v1/secrets/"+locked, anonymous)
			wantProblem(t, resp, out, http.StatusUnauthorized, "Passcode required")
		}
		for i := range backend.MaxPasscodeAttempts {
			resp, out := e.get("/api/v1/secrets/"+locked, anonymous, wrongGuess(i))
			wantProblem(t, resp, out, http.StatusUnauthorized, "Wrong passcode")
		}
		resp, out := e.get("/api/v1/secrets/"+locked, anonymous, wrongGuess(99))
		wantLocked(t, resp, out)
		readPlain()
		if _, ok := e.st.(*redisstore.Store); ok {
			keys, err := sharedRedis(t).Client(t).Keys(context.Background(), "*"+plain).Result()
			if err != nil || len(keys) != 1 {
				t.Fatalf("keys of the secret without a passcode: %v, %v; want only the secret", keys, err)
			}
		}
	})
}

// envOnAClock is a backend on the embedded store, both on a fake clock that
// set moves, for tests of time without waiting.
func envOnAClock(t *testing.T) (e *env, clock func() time.Time, set func(time.Time)) {
	t.Helper()
	var (
		mu  sync.Mutex
		now = time.Now()
	)
	clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	set = func(t time.Time) { mu.Lock(); defer mu.Unlock(); now = t }
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"),
		boltstore.Options{Config: store.Config{Now: clock}, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h, err := backend.New(backend.Config{Store: st, DataDir: t.TempDir(), UpstreamSecret: testSecret, Now: clock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, client: srv.Client(), st: st}, clock, set
}
