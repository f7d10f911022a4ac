package backend_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
)

// A secret's shareUrl opens the viewer page, which fetches nothing by
// itself: opening the link (or a chat's preview of it) leaves a view_once
// secret unread. The page may run only its own inline script and style.
func TestShareURLOpensTheViewer(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, m := e.createSecret(`{"encryptedBlob":"YmxvYg==","iv":"aXY=","expiryType":"view_once"}`, asKey("k1", "n", "o"))
		share, _ := m["shareUrl"].(string)
		path := strings.TrimPrefix(share, e.srv.URL)
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := e.do(method, path, nil, "", anonymous)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
				resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
				t.Fatalf("%s %s: %d %v", method, path, resp.StatusCode, resp.Header)
			}
			if method == http.MethodGet {
				csp := resp.Header.Get("Content-Security-Policy")
				for _, tag := range []string{"script", "style"} {
					content := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindSubmatch(body)
					sum := sha256.Sum256(content[1])
					if !strings.Contains(csp, tag+"-src 'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
						t.Errorf("CSP %q does not allow the page's own %s", csp, tag)
					}
				}
				if !strings.HasPrefix(csp, "default-src 'none';") || !strings.Contains(csp, "connect-src 'self'") {
					t.Errorf("CSP %q", csp)
				}
			}
		}
		resp, out := e.get("/api/v1/secrets/"+id, anonymous)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the secret after its page was opened: %d %s", resp.StatusCode, out)
		}
		resp, out = e.get("/s/not-an-id", anonymous)
		wantProblem(t, resp, out, http.StatusNotFound, "Secret does not exist or has already been viewed")
		// the shareUrl of earlier versions still opens it
		if resp, _ := e.get("/s/"+id, anonymous); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Fatalf("/s/<linkId>: %d", resp.StatusCode)
		}
	})
}

// shareUrl, <base>/<linkId>, shares its path with short links: a path of a
// linkId's shape that is no link opens the viewer while the secret exists
// (or its tombstone: the page says it was viewed), else it is the short
// link's 404; and no custom slug may take a linkId's shape (twelve letters
// and digits with a capital and a small letter), for good (one made once a
// secret is gone would send its old link's readers, and the key in its
// fragment, which a redirect carries, elsewhere); slugs of twelve in one
// case (presentation) are free, but for the linkId of a secret an earlier
// version drew so, while it is there.
func TestShareURLAndShortLinksShareRoot(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		id, _ := e.createSecret(`{"encryptedBlob":"YmxvYg==","iv":"aXY=","expiryType":"view_once"}`, asKey("k1", "n", "o"))
		earlier := store.Secret{ID: "earlier12345", EncryptedBlob: "YmxvYg==", IV: "aXY=", ExpiryType: store.ViewOnce,
			CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
		if err := e.st.CreateSecret(context.Background(), earlier); err != nil {
			t.Fatal(err)
		}
		for slug, want := range map[string]int{id: 400, "SummerSale24": 400, "HappyNewYear": 400, earlier.ID: 400, "presentation": 200, "summersale24": 200} {
			resp, out := e.postJSON("/api/shortlinks", `{"url":"https://evil.example/","slug":"`+slug+`"}`, asKey("k2", "m", "p"))
			if want == 200 {
				if resp.StatusCode != 200 {
					t.Fatalf("slug %s: %d %s, want 200", slug, resp.StatusCode, out)
				}
				continue
			}
			wantProblem(t, resp, out, http.StatusBadRequest, "Slug is reserved")
			resp, out = e.postJSON("/api/shorten", `{"url":"https://evil.example/","customSlug":"`+slug+`"}`, asKey("k2", "m", "p"))
			wantProblem(t, resp, out, http.StatusBadRequest, "Slug is reserved")
		}
		if resp, _ := e.get("/"+earlier.ID, anonymous); resp.StatusCode != http.StatusOK {
			t.Fatalf("/<linkId> of an earlier version's secret: %d", resp.StatusCode)
		}

		if resp, _ := e.get("/api/v1/secrets/"+id, anonymous); resp.StatusCode != http.StatusOK {
			t.Fatalf("reading the secret: %d", resp.StatusCode)
		}
		// viewed: its tombstone still opens the page, which says so
		resp, out := e.get("/"+id, anonymous)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), "<script>") {
			t.Fatalf("/<linkId> of a viewed secret: %d %s", resp.StatusCode, out)
		}
		resp, out = e.get("/AAAAAAAAAAAA", anonymous) // neither a link nor a secret
		wantProblem(t, resp, out, http.StatusNotFound, "Link not found")

		// a link of that shape made before slugs of it were reserved is a
		// link like any other
		if _, err := e.st.CreateLink(context.Background(), store.NewLink{Slug: "WinterSale24", URL: "https://example.com/", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if resp, _ := e.do(http.MethodGet, "/WinterSale24", nil, "", anonymous); resp.StatusCode != http.StatusFound {
			t.Fatalf("/WinterSale24: %d", resp.StatusCode)
		}
	})
}

// The viewer's script decrypts what a client encrypted with AES-256-GCM,
// with the key from the link's fragment (base64url, or base64), and hashes
// a passcode as the creator does (hex SHA-256): run with Node.js, which has
// the browser's WebCrypto.
func TestViewerScriptDecrypts(t *testing.T) {
	key := make([]byte, 32)
	iv := make([]byte, 12)
	rand.Read(key)
	rand.Read(iv)
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	const plain = "Hunter2 — the passphrase ✓"
	blob := gcm.Seal(nil, iv, []byte(plain), nil)
	passcode := sha256.Sum256([]byte("open sesame"))

	blob64, iv64 := base64.StdEncoding.EncodeToString(blob), base64.StdEncoding.EncodeToString(iv)
	out := runViewerScript(t, "", fmt.Sprintf(`
(async () => {
  console.log(await decryptSecret(%[1]q, %[2]q, %[3]q));
  console.log(await decryptSecret(%[1]q, %[2]q, %[4]q));
  console.log(await passcodeHash("open sesame"));
  const wrong = new Uint8Array(32);
  console.log(await decryptSecret(%[1]q, %[2]q, btoa(String.fromCharCode(...wrong))).then(() => "opened", () => "refused"));
})().catch((e) => { console.error(e); process.exit(1); });
`, blob64, iv64, base64.RawURLEncoding.EncodeToString(key), base64.StdEncoding.EncodeToString(key)))
	want := plain + "\n" + plain + "\n" + hex.EncodeToString(passcode[:]) + "\nrefused\n"
	if out != want {
		t.Fatalf("the script printed:\n%s\nwant:\n%s", out, want)
	}
}

// runViewerScript runs the page's script in node, after prelude (stand-ins
// for what a browser has) and before body, and returns what it printed.
func runViewerScript(t *testing.T, prelude, body string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed (scripts/test installs it)")
	}
	page, err := os.ReadFile("viewer.html")
	if err != nil {
		t.Fatal(err)
	}
	script := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindSubmatch(page)[1]
	harness := `if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;
` + prelude + string(script) + body
	file := filepath.Join(t.TempDir(), "harness.js")
	if err := os.WriteFile(file, []byte(harness), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, file).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	return string(out)
}

// The page's Reveal, in node with a stand-in for the DOM: a fetch that
// fails (the network, not the server) says so instead of leaving the page
// silent; a view_once secret that does not open with the link's key says
// it is gone.
func TestViewerSaysWhatWentWrong(t *testing.T) {
	dom := `const elements = {};
globalThis.document = { getElementById: (id) => elements[id] ||= { id, hidden: id === "passcode-row", value: "",
  listeners: {}, addEventListener(type, fn) { this.listeners[type] = fn; } } };
globalThis.location = { pathname: "/s/AAAAAAAAAAAA", hash: "#" + btoa(String.fromCharCode(...new Uint8Array(32))) };
globalThis.history = { replaceState() {} };
let answer;
globalThis.fetch = async () => answer();
`
	out := runViewerScript(t, dom, `
(async () => {
  answer = () => { throw new TypeError("Failed to fetch"); };
  await elements.reveal.listeners.click();
  console.log(elements.status.textContent);
  answer = () => ({ status: 200, ok: true, json: async () => ({ encryptedBlob: "AAAA", iv: "AAAAAAAAAAAAAAAA", expiryType: "view_once" }) });
  await elements.reveal.listeners.click();
  console.log(elements.status.textContent);
})().catch((e) => { console.error(e); process.exit(1); });
`)
	want := "The server could not be reached: try again.\n" +
		"The secret does not open with this link's key. It was to be viewed once, and is gone from the server now.\n"
	if out != want {
		t.Fatalf("the page said:\n%s\nwant:\n%s", out, want)
	}
}

// viewerDOM is a stand-in for the page's DOM in node, its link's fragment
// hash (with its #), and a fetch that counts its calls and answers answer().
func viewerDOM(hash string) string {
	return `const elements = {};
globalThis.document = { getElementById: (id) => elements[id] ||= { id, hidden: id === "passcode-row", value: "",
  listeners: {}, addEventListener(type, fn) { this.listeners[type] = fn; } } };
globalThis.location = { pathname: "/s/AAAAAAAAAAAA", hash: ` + fmt.Sprintf("%q", hash) + ` };
globalThis.history = { replaceState() {} };
let answer, fetched = 0;
globalThis.fetch = async () => { fetched++; return answer(); };
`
}

// A link whose key a chat app damaged (a character added, cut short) or
// that holds a key of another size is refused before anything is fetched:
// fetching a view_once secret burns it, and the key would not open it.
func TestViewerRefusesADamagedKeyBeforeFetching(t *testing.T) {
	key := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for name, hash := range map[string]string{
		"a dot added":     "#" + key + ".",
		"a bracket added": "#" + key + ")",
		"cut short":       "#" + key[:20],
		"a 128-bit key":   "#" + base64.RawURLEncoding.EncodeToString(make([]byte, 16)),
	} {
		out := runViewerScript(t, viewerDOM(hash), `
answer = () => ({ status: 200, ok: true, json: async () => ({ encryptedBlob: "AAAA", iv: "AAAAAAAAAAAAAAAA", expiryType: "view_once" }) });
(async () => {
  if (elements.reveal.listeners.click) await elements.reveal.listeners.click();
  console.log(fetched, elements.reveal.hidden, elements.status.textContent);
})().catch((e) => { console.error(e); process.exit(1); });
`)
		want := "0 true This link's key (the part after #) is damaged: it is not a 256-bit key. Ask the sender for the whole link; the secret was not opened.\n"
		if out != want {
			t.Errorf("%s: the page printed:\n%s\nwant:\n%s", name, out, want)
		}
	}
	// the whole key, in either alphabet, is taken
	for _, hash := range []string{"#" + key, "#" + base64.StdEncoding.EncodeToString(make([]byte, 32))} {
		out := runViewerScript(t, viewerDOM(hash), `console.log(elements.reveal.hidden === true, (elements.status || {}).textContent || "");`)
		if out != "false \n" {
			t.Errorf("%s: the page printed %q, want Reveal offered and nothing said", hash, out)
		}
	}
}

// Asked for a passcode, Reveal with the field empty asks for it again
// without a request: a wrong passcode spends one of a secret's few tries.
func TestViewerSpendsNoTryOnAnEmptyPasscode(t *testing.T) {
	out := runViewerScript(t, viewerDOM("#"+base64.RawURLEncoding.EncodeToString(make([]byte, 32))), `
answer = () => ({ status: 401, ok: false, json: async () => ({ error: "Invalid API key or wrong passcode." }) });
(async () => {
  await elements.reveal.listeners.click();
  console.log(fetched, elements.status.textContent);
  await elements.reveal.listeners.click();
  console.log(fetched, elements.status.textContent);
  elements.passcode.value = "guess";
  await elements.reveal.listeners.click();
  console.log(fetched, elements.status.textContent);
})().catch((e) => { console.error(e); process.exit(1); });
`)
	want := "1 This secret needs a passcode.\n1 Enter the passcode.\n2 Wrong passcode.\n"
	if out != want {
		t.Fatalf("the page printed:\n%s\nwant:\n%s", out, want)
	}
}
