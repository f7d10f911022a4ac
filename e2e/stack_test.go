package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/metricstest"
)

var (
	secretIDPattern = regexp.MustCompile(`^[A-Za-z0-9]{12}$`)
	rfc3339Pattern  = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
)

// checkShortLink checks a Short Link success body field by field against
// the doc's shape and returns it.
func checkShortLink(t *testing.T, r response, slug, target string) map[string]any {
	t.Helper()
	wantStatus(t, "POST /api/shortlinks", r, http.StatusOK)
	m := r.JSON(t)
	link, _ := m["link"].(map[string]any)
	if link == nil {
		t.Fatalf("no link object: %s", r.Body)
	}
	var keys []string
	for k := range link {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"available", "createdAt", "guestSessionId", "id", "lastVisitedAt", "ownerId", "slug", "url", "visitCount"}
	if !slices.Equal(keys, want) {
		t.Errorf("link members %v, want the doc's %v", keys, want)
	}
	if slug != "" && link["slug"] != slug {
		t.Errorf("link.slug = %v, want %q", link["slug"], slug)
	}
	if s, _ := link["slug"].(string); len(s) < 2 {
		t.Errorf("link.slug %q: want 2+ characters", s)
	}
	if link["url"] != target {
		t.Errorf("link.url = %v, want %q", link["url"], target)
	}
	if _, ok := link["id"].(float64); !ok {
		t.Errorf("link.id = %v, want a number", link["id"])
	}
	if s, _ := link["createdAt"].(string); !rfc3339Pattern.MatchString(s) {
		t.Errorf("link.createdAt = %v, want RFC 3339 UTC like 2025-12-19T01:00:00Z", link["createdAt"])
	}
	if link["lastVisitedAt"] != nil || link["guestSessionId"] != nil || link["visitCount"] != 0.0 || link["available"] != true {
		t.Errorf("new link: lastVisitedAt %v, guestSessionId %v, visitCount %v, available %v; want null, null, 0, true",
			link["lastVisitedAt"], link["guestSessionId"], link["visitCount"], link["available"])
	}
	if msg, _ := m["message"].(string); msg == "" {
		t.Errorf("no message: %s", r.Body)
	}
	return m
}

// checkOwner checks that a link created with a key belongs to that key's
// owner and returns the owner id.
func checkOwner(t *testing.T, m map[string]any, displayName string, email any) float64 {
	t.Helper()
	owner, _ := m["owner"].(map[string]any)
	if owner == nil {
		t.Fatalf("owner is %v, want the key's owner", m["owner"])
	}
	if owner["displayName"] != displayName {
		t.Errorf("owner.displayName = %v, want %q", owner["displayName"], displayName)
	}
	if owner["email"] != email {
		t.Errorf("owner.email = %v, want %v", owner["email"], email)
	}
	id, _ := owner["id"].(float64)
	if id == 0 || lookup(m, "link.ownerId") != id {
		t.Errorf("owner.id %v and link.ownerId %v: want the same non-zero id", owner["id"], lookup(m, "link.ownerId"))
	}
	if m["message"] != "Link saved to your account." {
		t.Errorf("message = %v, want the doc's %q", m["message"], "Link saved to your account.")
	}
	return id
}

// wantRedirect checks that an anonymous GET of the short link redirects.
func wantRedirect(t *testing.T, shortURL, target string) {
	t.Helper()
	r := mustDo(t, http.MethodGet, shortURL, nil)
	if r.Status != http.StatusFound || r.Header.Get("Location") != target {
		t.Fatalf("GET %s: %d Location %q, want 302 to %s", shortURL, r.Status, r.Header.Get("Location"), target)
	}
}

// wantImage checks an anonymous GET of an uploaded image.
func wantImage(t *testing.T, imageURL string, want []byte) {
	t.Helper()
	r := mustDo(t, http.MethodGet, imageURL, nil)
	wantStatus(t, "GET "+imageURL, r, http.StatusOK)
	if !bytes.Equal(r.Body, want) {
		t.Errorf("GET %s: %d bytes that differ from the %d uploaded", imageURL, len(r.Body), len(want))
	}
	if ct := r.Header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("Content-Type %q, want image/png", ct)
	}
	if v := r.Header.Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("X-Content-Type-Options %q, want nosniff", v)
	}
	if cc := r.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=") {
		t.Errorf("Cache-Control %q, want a long max-age", cc)
	}
}

// TestReferenceCurlExamples runs every curl example of the reference docs as
// written, with the real curl; only the host, the key and the file differ.
func TestReferenceCurlExamples(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("docs-curl")

		t.Run("ShortLink/auth", func(t *testing.T) {
			r := s.runCurl(t, readExample(t, "shortlink-auth.sh",
				"https://yourdomain.com", s.Base, "YOUR_API_KEY_HERE", key.Key))
			m := checkShortLink(t, r, "myslug", "https://example.com")
			checkOwner(t, m, "docs-curl", nil)
		})
		t.Run("ShortLink/generated-slug", func(t *testing.T) {
			r := s.runCurl(t, readExample(t, "shortlink-generated-slug.sh",
				"https://yourdomain.com", s.Base, "YOUR_API_KEY", key.Key))
			m := checkShortLink(t, r, "", "https://google.com")
			checkOwner(t, m, "docs-curl", nil)
			wantRedirect(t, s.Base+"/"+str(m, "link.slug"), "https://google.com")
		})
		t.Run("ShortLink/custom-slug", func(t *testing.T) {
			r := s.runCurl(t, readExample(t, "shortlink-custom-slug.sh",
				"https://yourdomain.com", s.Base, "YOUR_API_KEY", key.Key))
			checkShortLink(t, r, "github", "https://github.com")
			wantRedirect(t, s.Base+"/github", "https://github.com")
			// Once more: the slug is taken, in the doc's error shape.
			r = s.runCurl(t, readExample(t, "shortlink-custom-slug.sh",
				"https://yourdomain.com", s.Base, "YOUR_API_KEY", key.Key))
			if r.Status != http.StatusConflict || r.JSON(t)["error"] != "Slug already exists" {
				t.Fatalf("second create: %s, want 409 Slug already exists", r)
			}
		})
		t.Run("Shorturlx/shorten", func(t *testing.T) {
			r := s.runCurl(t, readExample(t, "shorturlx-shorten.sh",
				"https://www.shorturlx.xyz", s.Base, "sk_your_api_key_here", key.Key))
			wantStatus(t, "POST /api/shorten", r, http.StatusCreated)
			m := r.JSON(t)
			short := str(m, "shortUrl")
			if !strings.HasPrefix(short, s.Base+"/") || str(m, "url") != "https://example.com/long-url" {
				t.Fatalf("shorten: %s; want shortUrl under %s and the long url", r.Body, s.Base)
			}
			if short != s.Base+"/"+str(m, "slug") {
				t.Errorf("shortUrl %q does not end in slug %q", short, str(m, "slug"))
			}
			wantRedirect(t, short, "https://example.com/long-url")
		})
		t.Run("Slink/upload", func(t *testing.T) {
			img := pngImage(t)
			file := filepath.Join(s.home, "image.png")
			if err := os.WriteFile(file, img, 0o600); err != nil {
				t.Fatal(err)
			}
			r := s.runCurl(t, readExample(t, "slink-upload.sh",
				"https://your-slink-instance.com", s.Base, "sk_your_api_key_here", key.Key,
				"/path/to/your/image.jpg", file))
			wantStatus(t, "POST /api/external/upload", r, http.StatusCreated)
			m := r.JSON(t)
			u := str(m, "url")
			if !strings.HasPrefix(u, s.Base+"/i/") || str(m, "id") == "" || str(m, "mime") != "image/png" ||
				lookup(m, "size") != float64(len(img)) {
				t.Fatalf("upload: %s; want url under %s/i/, id, mime image/png, size %d", r.Body, s.Base, len(img))
			}
			wantImage(t, u, img)
		})
		t.Run("SecLink/create", func(t *testing.T) {
			before := time.Now()
			r := s.runCurl(t, readExample(t, "seclink-create.sh",
				"https://seclink.local", s.Base, "sk_live_xxx", key.Key))
			wantStatus(t, "POST /api/v1/secrets", r, http.StatusCreated)
			m := r.JSON(t)
			id := str(m, "linkId")
			if !secretIDPattern.MatchString(id) || str(m, "shareUrl") != s.Base+"/"+id {
				t.Fatalf("create secret: %s; want a 12-character linkId and shareUrl %s/<linkId>, as the doc's", r.Body, s.Base)
			}
			// view_once: kept 7 days at most while unread, in Unix ms.
			exp, _ := m["expiresAt"].(float64)
			if lo, hi := before.Add(7*24*time.Hour-time.Minute).UnixMilli(), time.Now().Add(7*24*time.Hour+time.Minute).UnixMilli(); int64(exp) < lo || int64(exp) > hi {
				t.Errorf("expiresAt %v, want about 7 days from now in Unix ms", m["expiresAt"])
			}
			// the shareUrl opens the viewer page through the gateway, and
			// opening it reads nothing
			page := mustDo(t, http.MethodGet, str(m, "shareUrl"), nil)
			wantStatus(t, "GET shareUrl", page, http.StatusOK)
			if !strings.HasPrefix(page.Header.Get("Content-Type"), "text/html") || page.Header.Get("Content-Security-Policy") == "" {
				t.Errorf("shareUrl: %v, want the viewer page", page.Header)
			}
			got := mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil)
			wantStatus(t, "first read", got, http.StatusOK)
			g := got.JSON(t)
			if g["encryptedBlob"] != "..." || g["iv"] != "..." || g["expiryType"] != "view_once" {
				t.Errorf("read: %s, want the blob, iv and expiryType as sent", got.Body)
			}
			wantProblem(t, "second read", mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil), http.StatusGone, "")
		})
	}, withRedisCluster, withRedisSentinel, withComposeRedis)
}

// TestReferencePythonExamples runs the docs' Python requests examples as
// written with python3; only the host and the key differ.
func TestReferencePythonExamples(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("docs-python")

		t.Run("ShortLink", func(t *testing.T) {
			script := readExample(t, "shortlink.py", "https://yourdomain.com", s.Base, "YOUR_API_KEY", key.Key)
			if out := s.runPython(t, script); out != "Short link created: /myslug\n" {
				t.Fatalf("first run printed %q, want %q", out, "Short link created: /myslug\n")
			}
			// The script's own error branch: the slug is now taken.
			if out := s.runPython(t, script); out != "Error: Slug already exists\n" {
				t.Fatalf("second run printed %q, want %q", out, "Error: Slug already exists\n")
			}
			wantRedirect(t, s.Base+"/myslug", "https://example.com")
		})
		t.Run("SecLink", func(t *testing.T) {
			out := s.runPython(t, readExample(t, "seclink.py", "https://seclink.local", s.Base, "sk_live_xxx", key.Key))
			// print(response.json()) prints the dict's repr.
			re := regexp.MustCompile(`^\{'linkId': '([A-Za-z0-9]{12})', 'shareUrl': '([^']+)', 'expiresAt': (\d{13})\}\n$`)
			sub := re.FindStringSubmatch(out)
			if sub == nil {
				t.Fatalf("printed %q, want {'linkId': ..., 'shareUrl': ..., 'expiresAt': ...}", out)
			}
			if sub[2] != s.Base+"/"+sub[1] {
				t.Errorf("shareUrl %q, want %s/%s", sub[2], s.Base, sub[1])
			}
			r := mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+sub[1], nil)
			wantStatus(t, "read", r, http.StatusOK)
			if m := r.JSON(t); m["encryptedBlob"] != "..." || m["expiryType"] != "view_once" {
				t.Errorf("read: %s", r.Body)
			}
		})
	})
}

// shareXUploader is the part of a ShareX custom uploader file (.sxcu) that
// ShareX uses for an image upload.
type shareXUploader struct {
	Version         string
	Name            string
	DestinationType string
	RequestMethod   string
	RequestURL      string
	Parameters      map[string]string
	Headers         map[string]string
	Body            string
	Arguments       map[string]string
	FileFormName    string
	URL             string
	ErrorMessage    string
}

// shareXSyntax matches ShareX's response references: {json:path} (current
// syntax) and $json:path$ (files older than 13.7).
var shareXSyntax = regexp.MustCompile(`\{json:([^}]+)\}|\$json:([^$]+)\$`)

// shareXExpand applies an .sxcu URL rule to a JSON response body.
func shareXExpand(t *testing.T, rule string, body []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("upload response is not JSON: %v\n%s", err, body)
	}
	if !shareXSyntax.MatchString(rule) {
		t.Fatalf("URL rule %q references no JSON field", rule)
	}
	return shareXSyntax.ReplaceAllStringFunc(rule, func(m string) string {
		sub := shareXSyntax.FindStringSubmatch(m)
		path := sub[1] + sub[2]
		path = strings.NewReplacer("[", ".", "]", "").Replace(path) // files[0].url -> files.0.url
		s, ok := lookup(v, path).(string)
		if !ok {
			t.Fatalf("URL rule %q: no string at %q in %s", rule, path, body)
		}
		return s
	})
}

// TestShareXUploaderFlow downloads the .sxcu through the gateway, reads it as
// ShareX does, uploads a PNG exactly as the file describes, follows the URL
// rule and fetches the image anonymously.
func TestShareXUploaderFlow(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("sharex")
		q := url.Values{"baseUrl": {s.Base}, "apiKey": {key.Key}}
		r := mustDo(t, http.MethodGet, s.Base+"/api/user/sharex-config?"+q.Encode(), nil, "Authorization", "Bearer "+key.Key)
		wantStatus(t, "GET /api/user/sharex-config", r, http.StatusOK)
		if cd := r.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment") || !strings.Contains(cd, `.sxcu"`) {
			t.Errorf("Content-Disposition %q, want an .sxcu attachment", cd)
		}
		var sx shareXUploader
		if err := json.Unmarshal(r.Body, &sx); err != nil {
			t.Fatalf(".sxcu is not JSON: %v\n%s", err, r.Body)
		}
		t.Logf(".sxcu: %s", r.Body)
		if sx.Version == "" || sx.Name == "" {
			t.Errorf(".sxcu Version %q Name %q: want both", sx.Version, sx.Name)
		}
		if !slices.Contains(strings.Split(sx.DestinationType, ", "), "ImageUploader") {
			t.Errorf("DestinationType %q, want ImageUploader", sx.DestinationType)
		}
		if sx.RequestMethod != http.MethodPost || sx.RequestURL != s.Base+"/api/external/upload" ||
			sx.Body != "MultipartFormData" || sx.FileFormName != "image" || sx.Headers["Authorization"] != "Bearer "+key.Key {
			t.Fatalf(".sxcu: method %q url %q body %q file form name %q headers %v; want POST %s/api/external/upload, "+
				"MultipartFormData, image, Authorization: Bearer <key>",
				sx.RequestMethod, sx.RequestURL, sx.Body, sx.FileFormName, sx.Headers, s.Base)
		}

		// The upload, as ShareX builds it: Parameters in the query,
		// Arguments as form fields, the file under FileFormName with its
		// name and the MIME type of its extension, the file's Headers.
		img := pngImage(t)
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for k, v := range sx.Arguments {
			if err := mw.WriteField(k, v); err != nil {
				t.Fatal(err)
			}
		}
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename="ShareX_2026-01-01_12-00-00.png"`, sx.FileFormName))
		h.Set("Content-Type", "image/png")
		part, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = part.Write(img)
		if err := mw.Close(); err != nil {
			t.Fatal(err)
		}
		reqURL, err := url.Parse(sx.RequestURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(sx.Parameters) > 0 {
			pq := reqURL.Query()
			for k, v := range sx.Parameters {
				pq.Set(k, v)
			}
			reqURL.RawQuery = pq.Encode()
		}
		header := []string{"Content-Type", mw.FormDataContentType(), "User-Agent", "ShareX/" + sx.Version}
		for k, v := range sx.Headers {
			header = append(header, k, v)
		}
		up := mustDo(t, sx.RequestMethod, reqURL.String(), &body, header...)
		wantStatus(t, "ShareX upload", up, http.StatusCreated)

		imageURL := shareXExpand(t, sx.URL, up.Body)
		if !strings.HasPrefix(imageURL, s.Base+"/") {
			t.Errorf("URL %q is not under the gateway %s", imageURL, s.Base)
		}
		wantImage(t, imageURL, img) // anonymous
		// HEAD works too and serves no body.
		head := mustDo(t, http.MethodHead, imageURL, nil)
		if head.Status != http.StatusOK || head.Header.Get("Content-Type") != "image/png" || len(head.Body) != 0 {
			t.Errorf("HEAD %s: %d %q with %d body bytes", imageURL, head.Status, head.Header.Get("Content-Type"), len(head.Body))
		}

		// ShareX shows ErrorMessage on failure: the rule finds the error.
		bad := mustDo(t, sx.RequestMethod, reqURL.String(), strings.NewReader("not multipart"),
			"Content-Type", "text/plain", "Authorization", sx.Headers["Authorization"])
		if bad.Status != http.StatusBadRequest {
			t.Fatalf("non-multipart upload: %s, want 400", bad)
		}
		if sx.ErrorMessage != "" {
			if msg := shareXExpand(t, sx.ErrorMessage, bad.Body); msg == "" {
				t.Errorf("ErrorMessage rule %q found nothing in %s", sx.ErrorMessage, bad.Body)
			}
		}
	})
}

// race sends n copies of a request at once (after a common start signal)
// and counts the statuses.
func race(t *testing.T, n int, send func() (response, bool)) (map[int]int, []response) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		count = map[int]int{}
		all   []response
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, ok := send()
			if !ok {
				return
			}
			mu.Lock()
			count[r.Status]++
			all = append(all, r)
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return count, all
}

// TestSlugRace creates one slug from many clients at once through the
// gateway: exactly one wins, the others get the doc's 409.
func TestSlugRace(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("racer")
		const n = 20 // Short Link's limit a minute
		count, all := race(t, n, func() (response, bool) {
			return do(t, http.MethodPost, s.Base+"/api/shortlinks", strings.NewReader(`{"url":"https://example.com/race","slug":"race-slug"}`),
				"Content-Type", "application/json", "X-API-Key", key.Key)
		})
		if count[http.StatusOK] != 1 || count[http.StatusConflict] != n-1 {
			t.Fatalf("statuses %v, want exactly one 200 and %d 409", count, n-1)
		}
		for _, r := range all {
			if r.Status == http.StatusConflict {
				if m := r.JSON(t); m["error"] != "Slug already exists" {
					t.Fatalf("409 body %s, want error Slug already exists", r.Body)
				}
			}
		}
		wantRedirect(t, s.Base+"/race-slug", "https://example.com/race")
	}, withRedisCluster)
}

// TestViewOnceSecretRace reads one view_once secret from many clients at
// once through the gateway: exactly one gets it, the others 410, and so does
// everyone after.
func TestViewOnceSecretRace(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("reader", "--rate-limit", "10000/1h")
		create := func() string {
			t.Helper()
			r := postJSON(t, s.Base+"/api/v1/secrets", `{"encryptedBlob":"c2VjcmV0","iv":"aXY=","expiryType":"view_once"}`,
				"Authorization", "Bearer "+key.Key)
			wantStatus(t, "create secret", r, http.StatusCreated)
			return str(r.JSON(t), "linkId")
		}
		check := func(t *testing.T, n int, count map[int]int, all []response) {
			t.Helper()
			if count[http.StatusOK] != 1 || count[http.StatusGone] != n-1 {
				t.Fatalf("statuses %v, want exactly one 200 and %d 410", count, n-1)
			}
			for _, r := range all {
				if r.Status == http.StatusOK {
					if m := r.JSON(t); m["encryptedBlob"] != "c2VjcmV0" || m["iv"] != "aXY=" || m["expiryType"] != "view_once" {
						t.Errorf("winner got %s", r.Body)
					}
				} else {
					wantProblem(t, "loser", r, http.StatusGone, "Secret was previously viewed and permanently destroyed")
				}
			}
		}

		t.Run("with a key", func(t *testing.T) {
			id := create()
			const n = 30
			count, all := race(t, n, func() (response, bool) {
				return do(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil, "X-API-Key", key.Key)
			})
			check(t, n, count, all)
			wantProblem(t, "read after the race", mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil, "X-API-Key", key.Key),
				http.StatusGone, "")
		})
		// Anonymous readers share the per-IP budget of 20 an hour: 10 + 2.
		t.Run("anonymous", func(t *testing.T) {
			id := create()
			const n = 10
			count, all := race(t, n, func() (response, bool) {
				return do(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil)
			})
			check(t, n, count, all)
			wantProblem(t, "read after the race", mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil), http.StatusGone, "")
			// An id that never existed is 404, not 410.
			wantProblem(t, "unknown id", mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/AAAAAAAAAAAA", nil), http.StatusNotFound, "")
		})
	}, withRedisCluster, withComposeRedis)
}

// TestSpoofedIdentityHeaders sends the gateway's own X-Keygate-* headers
// from the client: the backend must only ever see the gateway's values.
func TestSpoofedIdentityHeaders(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		alice := s.generateKey("alice", "--owner", "alice@example.com")
		bob := s.generateKey("bob")
		create := func(k apiKey, slug string, spoof ...string) map[string]any {
			t.Helper()
			r := postJSON(t, s.Base+"/api/shortlinks", `{"url":"https://example.com/`+slug+`","slug":"`+slug+`"}`,
				append([]string{"X-API-Key", k.Key}, spoof...)...)
			return checkShortLink(t, r, slug, "https://example.com/"+slug)
		}
		aliceID := checkOwner(t, create(alice, "alice-plain"), "alice@example.com", "alice@example.com")
		bobID := checkOwner(t, create(bob, "bob-plain"), "bob", nil)
		if aliceID == bobID {
			t.Fatalf("alice and bob share owner id %v", aliceID)
		}

		// Bob poses as alice with every identity header, and as anonymous,
		// and with a guessed upstream secret: the link is still bob's.
		m := create(bob, "bob-spoof",
			"X-Keygate-Key-Id", alice.ID,
			"X-Keygate-Key-Name", "alice",
			"X-Keygate-Owner", "alice@example.com",
			"X-Keygate-Roles", "admin",
			"X-Keygate-Anonymous", "true",
			"X-Keygate-Upstream-Secret", "guessed-"+s.Secret[:8],
		)
		if got := checkOwner(t, m, "bob", nil); got != bobID {
			t.Errorf("spoofed request: owner id %v, want bob's %v", got, bobID)
		}
		// Alice claims another owner: still alice.
		m = create(alice, "alice-spoof", "X-Keygate-Owner", "mallory@example.com", "X-Keygate-Key-Id", bob.ID)
		if got := checkOwner(t, m, "alice@example.com", "alice@example.com"); got != aliceID {
			t.Errorf("spoofed request: owner id %v, want alice's %v", got, aliceID)
		}

		// Straight to the backend with a guessed secret and alice's identity.
		for _, guess := range []string{"guessed", s.Secret[:len(s.Secret)-1], s.Secret + "x", strings.ToUpper(s.Secret)} {
			r := postJSON(t, "http://"+s.Backend+"/api/shortlinks", `{"url":"https://example.com","slug":"direct"}`,
				"X-Keygate-Upstream-Secret", guess, "X-Keygate-Key-Id", alice.ID, "X-Keygate-Owner", "alice@example.com")
			wantProblem(t, "backend with a guessed secret", r, http.StatusForbidden, "")
		}
	})
}

// TestSkippingTheGatewayIsRefused talks to the backend port directly.
func TestSkippingTheGatewayIsRefused(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		backend := "http://" + s.Backend
		for _, c := range []struct{ method, path, body string }{
			{http.MethodPost, "/api/shortlinks", `{"url":"https://example.com"}`},
			{http.MethodPost, "/api/shorten", `{"url":"https://example.com"}`},
			{http.MethodPost, "/api/v1/secrets", `{"encryptedBlob":"x","iv":"y","expiryType":"1hour"}`},
			{http.MethodGet, "/api/v1/secrets/AAAAAAAAAAAA", ""},
			{http.MethodPost, "/api/external/upload", ""},
			{http.MethodGet, "/api/user/sharex-config?baseUrl=http://x&apiKey=k", ""},
			{http.MethodGet, "/someslug", ""},
			{http.MethodGet, "/i/AAAAAAAAAAAAAAAAAAAA.png", ""},
		} {
			r := mustDo(t, c.method, backend+c.path, strings.NewReader(c.body),
				"Content-Type", "application/json", "X-Keygate-Key-Id", "k1", "X-Keygate-Key-Name", "admin")
			wantProblem(t, c.method+" "+c.path+" without the secret", r, http.StatusForbidden, "Forbidden")
		}
		// The health check is the one open endpoint, and reveals nothing.
		wantStatus(t, "GET /healthz", mustDo(t, http.MethodGet, backend+"/healthz", nil), http.StatusOK)
		// Control: with the real secret the same request is served, so the
		// 403s above are the secret check and nothing else.
		r := postJSON(t, backend+"/api/shortlinks", `{"url":"https://example.com/control"}`, "X-Keygate-Upstream-Secret", s.Secret)
		checkShortLink(t, r, "", "https://example.com/control")
	})
}

// TestShortLinksRateLimit: the stack limits /api/shortlinks to 20 requests a
// minute per key, with Short Link's 429 body and the X-RateLimit-* headers;
// the same with leases (KEYGATE_LEASE).
func TestShortLinksRateLimit(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		key := s.generateKey("limited") // no own limit: the route's applies
		clearOfWindowEnd(t, 'k', key.ID, time.Minute, 15*time.Second)
		create := func(k apiKey) response {
			return postJSON(t, s.Base+"/api/shortlinks", `{"url":"https://example.com"}`, "X-API-Key", k.Key)
		}
		for i := 1; i <= 20; i++ {
			r := create(key)
			wantStatus(t, fmt.Sprintf("request %d", i), r, http.StatusOK)
			if l, rem := r.Header.Get("X-RateLimit-Limit"), r.Header.Get("X-RateLimit-Remaining"); l != "20" || rem != strconv.Itoa(20-i) {
				t.Errorf("request %d: X-RateLimit-Limit %q Remaining %q, want 20 and %d", i, l, rem, 20-i)
			}
		}
		// with leases, most of the 20 were admitted without a store call
		if calls := metricstest.StoreCalls(t, s.Admin, "check"); s.kind == withRedisLeases && calls > 10 {
			t.Errorf("KEYGATE_LEASE=64: %d store calls for 20 requests", calls)
		}
		before := time.Now()
		r := create(key)
		wantProblem(t, "request 21", r, http.StatusTooManyRequests, "Too much request. Try again later.")
		if l, rem := r.Header.Get("X-RateLimit-Limit"), r.Header.Get("X-RateLimit-Remaining"); l != "20" || rem != "0" {
			t.Errorf("429: X-RateLimit-Limit %q Remaining %q, want 20 and 0", l, rem)
		}
		// A refused sliding-window request may have to wait into the next
		// window, until enough of this one's count has slid out: up to two.
		reset, err := strconv.ParseInt(r.Header.Get("X-RateLimit-Reset"), 10, 64)
		if err != nil || reset < before.Add(-time.Second).UnixMilli() || reset > time.Now().Add(121*time.Second).UnixMilli() {
			t.Errorf("429: X-RateLimit-Reset %q, want Unix ms within the next two minutes", r.Header.Get("X-RateLimit-Reset"))
		}
		if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 120 {
			t.Errorf("429: Retry-After %q, want 1..120 seconds", r.Header.Get("Retry-After"))
		}
		// The limit is per key, and per route.
		wantStatus(t, "another key", create(s.generateKey("other")), http.StatusOK)
		other := postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com"}`, "Authorization", "Bearer "+key.Key)
		wantStatus(t, "same key on /api/shorten", other, http.StatusCreated)
		if l := other.Header.Get("X-RateLimit-Limit"); l != "100" {
			t.Errorf("/api/shorten: X-RateLimit-Limit %q, want the default 100", l)
		}
	}, withRedisLeases, withRedisCluster)
}

// TestStackRouteLimits: each product's routes have the limits of its docs
// (README, the stack's limits table), and products do not draw on one
// another's budgets.
func TestStackRouteLimits(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		limitOf := func(what string, r response, status int, limit string) {
			t.Helper()
			wantStatus(t, what, r, status)
			if l := r.Header.Get("X-RateLimit-Limit"); l != limit {
				t.Errorf("%s: X-RateLimit-Limit %q, want %s", what, l, limit)
			}
		}
		paid := s.generateKey("paid", "--rate-limit", "50000/1h")
		plain := s.generateKey("plain")
		// Short Link's and Shorturlx's limits are their contracts; SecLink's
		// keys have 10,000 an hour "or more".
		limitOf("paid key, Short Link", postJSON(t, s.Base+"/api/shortlinks", `{"url":"https://example.com/paid"}`, "X-API-Key", paid.Key), http.StatusOK, "20")
		limitOf("paid key, Shorturlx", postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/paid"}`, "X-API-Key", paid.Key), http.StatusCreated, "100")
		secret := `{"encryptedBlob":"c2VjcmV0","iv":"aXY=","expiryType":"1hour"}`
		limitOf("paid key, SecLink", postJSON(t, s.Base+"/api/v1/secrets", secret, "Authorization", "Bearer "+paid.Key), http.StatusCreated, "50000")
		r := postJSON(t, s.Base+"/api/v1/secrets", secret, "Authorization", "Bearer "+plain.Key)
		limitOf("plain key, SecLink", r, http.StatusCreated, "10000")
		id := str(r.JSON(t), "linkId")
		limitOf("plain key, Slink", mustDo(t, http.MethodGet, s.Base+"/api/user/sharex-config?baseUrl=http://x&apiKey=k", nil, "X-API-Key", plain.Key), http.StatusOK, "100")
		// Slink's 100 per 10 minutes and Shorturlx's are budgets apart
		// (zones): the key's first request on each
		if r := postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/plain"}`, "X-API-Key", plain.Key); r.Header.Get("X-RateLimit-Remaining") != "99" {
			t.Errorf("plain key's first Shorturlx request after a Slink one: X-RateLimit-Remaining %q, want 99", r.Header.Get("X-RateLimit-Remaining"))
		}

		// An anonymous reader who followed 20 short links can still read a
		// secret: SecLink's 20 an hour is its own.
		checkShortLink(t, postJSON(t, s.Base+"/api/shortlinks", `{"url":"https://example.com/often","slug":"often"}`, "X-API-Key", plain.Key), "often", "https://example.com/often")
		for i := range 20 {
			limitOf(fmt.Sprintf("redirect %d", i+1), mustDo(t, http.MethodHead, s.Base+"/often", nil), http.StatusFound, "600")
		}
		r = mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil)
		limitOf("anonymous secret read after 20 redirects", r, http.StatusOK, "20")
		if rem := r.Header.Get("X-RateLimit-Remaining"); rem != "19" {
			t.Errorf("anonymous secret read: X-RateLimit-Remaining %q, want 19", rem)
		}
		// the rest of the 20, then SecLink's 429, in its words
		for i := range 19 {
			wantStatus(t, fmt.Sprintf("anonymous read %d", i+2), mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil), http.StatusOK)
		}
		wantProblem(t, "anonymous read 21", mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/"+id, nil),
			http.StatusTooManyRequests, "You have exceeded your rate limit")
	})
}

// TestMissingOrBadKey: the write APIs need a key (but Shorturlx's, below);
// the gateway answers 401 problem+json before anything reaches the backend.
func TestMissingOrBadKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		for _, c := range []struct{ method, path, body string }{
			{http.MethodPost, "/api/shortlinks", `{"url":"https://example.com"}`},
			{http.MethodPost, "/api/v1/secrets", `{"encryptedBlob":"x","iv":"y","expiryType":"1hour"}`},
			{http.MethodPost, "/api/external/upload", ""},
			{http.MethodGet, "/api/user/sharex-config?baseUrl=http://x&apiKey=k", ""},
			{http.MethodGet, "/rest/v3/short-urls", ""}, // Shlink's
		} {
			what := c.method + " " + c.path
			r := mustDo(t, c.method, s.Base+c.path, strings.NewReader(c.body), "Content-Type", "application/json")
			// Short Link: 401 "Invalid API key" when the X-API-Key header
			// "is invalid or doesn't exist"
			wantProblem(t, what+" without a key", r, http.StatusUnauthorized, "Invalid API key")
			// Shlink: "if no API key is provided", this payload
			if m := r.JSON(t); m["type"] != "https://shlink.io/api/error/invalid-api-key" || m["detail"] != "Provided API key does not exist or is invalid" ||
				m["title"] != "Invalid API key" || m["status"] != float64(401) {
				t.Errorf("%s without a key: %v, want Shlink's payload", what, m)
			}
			if !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q, want Bearer", what, r.Header.Get("WWW-Authenticate"))
			}
			unknown := "sk_" + randomHex(t, 24)
			r = mustDo(t, c.method, s.Base+c.path, strings.NewReader(c.body), "Content-Type", "application/json", "X-API-Key", unknown)
			wantProblem(t, what+" with an unknown key", r, http.StatusUnauthorized, "Invalid API key")
			r = mustDo(t, c.method, s.Base+c.path, strings.NewReader(c.body), "Content-Type", "application/json", "Authorization", "Bearer not-a-key")
			wantProblem(t, what+" with a malformed key", r, http.StatusUnauthorized, "Invalid API key format")
		}
	}, withComposeRedis)
}

// TestShorturlxWithoutAKey: Shorturlx limits "unauthenticated requests to
// 10 requests per 10 minutes", per client; a bad key is still refused, not
// taken for none.
func TestShorturlxWithoutAKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *stack) {
		for i := 1; i <= 10; i++ {
			r := postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/anonymous"}`)
			wantStatus(t, fmt.Sprintf("request %d without a key", i), r, http.StatusCreated)
			if l, rem := r.Header.Get("X-RateLimit-Limit"), r.Header.Get("X-RateLimit-Remaining"); l != "10" || rem != strconv.Itoa(10-i) {
				t.Errorf("request %d: X-RateLimit-Limit %q Remaining %q, want 10 and %d", i, l, rem, 10-i)
			}
		}
		wantProblem(t, "request 11 without a key", postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/anonymous"}`),
			http.StatusTooManyRequests, "Too much request. Try again later.")
		r := postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com"}`, "X-API-Key", "sk_"+randomHex(t, 24))
		wantProblem(t, "an unknown key", r, http.StatusUnauthorized, "Invalid API key")
		key := s.generateKey("shorturlx")
		r = postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com"}`, "Authorization", "Bearer "+key.Key)
		wantStatus(t, "with a key, past the anonymous limit", r, http.StatusCreated)
		if l := r.Header.Get("X-RateLimit-Limit"); l != "100" {
			t.Errorf("with a key: X-RateLimit-Limit %q, want 100", l)
		}
		// Caddy matches an unclean path as its clean form, and the
		// backend routes it so: the same 201, not Go's redirect.
		r = postJSON(t, s.Base+"//api/./shorten", `{"url":"https://example.com"}`, "Authorization", "Bearer "+key.Key)
		wantStatus(t, "POST //api/./shorten with a key", r, http.StatusCreated)
	})
}

// TestKeysStayOutOfTheLogs: at DEBUG, where Caddy logs every refusal's
// request and reverse_proxy every request it sends upstream, the gateway's
// log holds no key (X-API-Key, or the apiKey of Slink's sharex-config
// query), passcode hash nor the upstream secret: the stack's log filter
// deletes them (Caddy itself redacts only Authorization).
func TestKeysStayOutOfTheLogs(t *testing.T) {
	s := startStack(t, withRedis, "KEYGATE_LOG_LEVEL=DEBUG")
	key := s.generateKey("logged")
	unknown := "sk_" + randomHex(t, 24)
	passcode := randomHex(t, 32)
	q := url.Values{"baseUrl": {s.Base}, "apiKey": {key.Key}}
	r := mustDo(t, http.MethodGet, s.Base+"/api/user/sharex-config?"+q.Encode(), nil, "X-API-Key", key.Key)
	wantStatus(t, "sharex-config", r, http.StatusOK)
	r = mustDo(t, http.MethodGet, s.Base+"/api/v1/secrets/A1b2C3d4E5f6?passcodeHash="+passcode, nil, "X-API-Key", key.Key, "X-Passcode-Hash", passcode)
	wantStatus(t, "reading a secret that is not there", r, http.StatusNotFound)
	q.Set("apiKey", unknown)
	r = mustDo(t, http.MethodGet, s.Base+"/api/user/sharex-config?"+q.Encode(), nil, "X-API-Key", unknown)
	wantProblem(t, "an unknown key", r, http.StatusUnauthorized, "Invalid API key")

	// The entries that log a request (at DEBUG Caddy also logs its whole
	// config, the upstream secret in it, as its admin API serves it). A
	// refusal is logged after its response is sent: wait for it.
	requestLog := func() string {
		var logged strings.Builder
		for _, line := range strings.Split(s.gateway.logs.tail(16<<20), "\n") {
			if strings.Contains(line, `"request":{"remote_ip"`) {
				logged.WriteString(line + "\n")
			}
		}
		return logged.String()
	}
	logs := requestLog()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs, `"status":401`) && time.Now().Before(deadline); logs = requestLog() {
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{`"status":401`, "/api/user/sharex-config", "upstream roundtrip"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the gateway's DEBUG log lacks %q; the test sees no request logged", want)
		}
	}
	for what, secret := range map[string]string{"the key": key.Key, "an unknown key": unknown, "a passcode hash": passcode, "the upstream secret": s.Secret} {
		if strings.Contains(logs, secret) {
			t.Errorf("the gateway's request log holds %s", what)
		}
	}
}

// TestExamplesMatchReferenceDocs keeps testdata/ honest: every example there
// is a verbatim excerpt of its reference doc. The docs live outside the
// repository (KEYGATE_REFERENCE_DIR, default ../../shared/reference); where
// they are absent this check is skipped, the examples themselves still run.
func TestExamplesMatchReferenceDocs(t *testing.T) {
	dir := os.Getenv("KEYGATE_REFERENCE_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared", "reference")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("reference docs not found at %s (set KEYGATE_REFERENCE_DIR): %v", dir, err)
	}
	for example, doc := range map[string]string{
		"shortlink-auth.sh":           "shortlink-api.txt",
		"shortlink-generated-slug.sh": "shortlink-api.txt",
		"shortlink-custom-slug.sh":    "shortlink-api.txt",
		"shortlink.py":                "shortlink-api.txt",
		"shorturlx-shorten.sh":        "shorturlx-api-keys-and-rate-limits.txt",
		"slink-upload.sh":             "slink-api-keys-and-upload.txt",
		"seclink-create.sh":           "seclink-secrets-api.txt",
		"seclink.py":                  "seclink-secrets-api.txt",
	} {
		ex, err := os.ReadFile(filepath.Join("testdata", example))
		if err != nil {
			t.Fatal(err)
		}
		d, err := os.ReadFile(filepath.Join(dir, doc))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(d, bytes.TrimRight(ex, "\n")) {
			t.Errorf("testdata/%s is not a verbatim excerpt of %s", example, doc)
		}
	}
}

// TestTrustedProxies: per-IP limits count the client a trusted proxy names
// in X-Forwarded-For (KEYGATE_TRUSTED_PROXIES), so that behind a TLS
// proxy callers do not share one bucket; and only a trusted proxy's word is
// taken, so a client cannot name another address to escape its limit.
func TestTrustedProxies(t *testing.T) {
	shorten := func(t *testing.T, s *stack, forwardedFor string) response {
		return postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/anonymous"}`, "X-Forwarded-For", forwardedFor)
	}
	// spend uses up the client's 10 requests in 10 minutes
	spend := func(t *testing.T, s *stack, forwardedFor, subject string) {
		clearOfWindowEnd(t, 's', subject, 10*time.Minute, 15*time.Second)
		for i := 1; i <= 10; i++ {
			wantStatus(t, fmt.Sprintf("request %d from %s", i, forwardedFor), shorten(t, s, forwardedFor), http.StatusCreated)
		}
		wantProblem(t, "request 11 from "+forwardedFor, shorten(t, s, forwardedFor), http.StatusTooManyRequests, "Too much request. Try again later.")
	}
	t.Run("trusted", func(t *testing.T) {
		s := startStack(t, withEmbedded, "KEYGATE_TRUSTED_PROXIES=127.0.0.1/8 ::1")
		spend(t, s, "203.0.113.1", "ip:203.0.113.1")
		wantStatus(t, "another client behind the proxy", shorten(t, s, "203.0.113.2"), http.StatusCreated)
		// the proxy appends the address it saw to what the client sent:
		// the right-most one it did not add itself is the client
		wantProblem(t, "the first client sending an X-Forwarded-For of its own", shorten(t, s, "198.51.100.7, 203.0.113.1"),
			http.StatusTooManyRequests, "Too much request. Try again later.")
	})
	// an abuse report names the client behind the proxy, not the proxy
	t.Run("reports", func(t *testing.T) {
		s := startStack(t, withRedis, "KEYGATE_TRUSTED_PROXIES=127.0.0.1/8 ::1")
		key := s.generateKey("reporter")
		r := postJSON(t, s.Base+"/api/v1/secrets", `{"encryptedBlob":"c2VjcmV0","iv":"aXY=","expiryType":"1hour"}`,
			"Authorization", "Bearer "+key.Key)
		wantStatus(t, "POST /api/v1/secrets", r, http.StatusCreated)
		r = postJSON(t, s.Base+"/api/v1/secrets/"+str(r.JSON(t), "linkId")+"/report", `{"reason":"phishing"}`,
			"X-Forwarded-For", "203.0.113.9")
		wantStatus(t, "POST /api/v1/secrets/<id>/report", r, http.StatusAccepted)
		if list := s.reports(); len(list) != 1 || list[0]["remoteIp"] != "203.0.113.9" {
			t.Fatalf("backend reports: %v, want one report from 203.0.113.9", list)
		}
	})
	t.Run("not trusted", func(t *testing.T) {
		s := startStack(t, withEmbedded)
		spend(t, s, "203.0.113.1", "ip:127.0.0.1") // the address the gateway saw
		wantProblem(t, "the same client naming another address", shorten(t, s, "203.0.113.2"),
			http.StatusTooManyRequests, "Too much request. Try again later.")
	})
}

// KEYGATE_RATE_LIMIT_HEADERS picks the rate-limit headers of every route:
// both styles by default, the X-RateLimit-* trio alone with x-ratelimit.
func TestRateLimitHeadersSetting(t *testing.T) {
	for setting, want := range map[string]bool{"": true, "x-ratelimit": false} {
		var env []string
		if setting != "" {
			env = append(env, "KEYGATE_RATE_LIMIT_HEADERS="+setting)
		}
		s := startStack(t, withEmbedded, env...)
		r := postJSON(t, s.Base+"/api/shorten", `{"url":"https://example.com/headers"}`)
		wantStatus(t, "POST /api/shorten", r, http.StatusCreated)
		if r.Header.Get("X-RateLimit-Limit") != "10" {
			t.Errorf("KEYGATE_RATE_LIMIT_HEADERS=%q: X-RateLimit-Limit %q, want 10", setting, r.Header.Get("X-RateLimit-Limit"))
		}
		if got := r.Header.Get("RateLimit-Policy") != ""; got != want {
			t.Errorf("KEYGATE_RATE_LIMIT_HEADERS=%q: RateLimit-Policy %q", setting, r.Header.Get("RateLimit-Policy"))
		}
	}
}
