package backend_test

import (
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
