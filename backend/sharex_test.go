package backend_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// sxcu is the subset of a ShareX custom uploader this test reads.
type sxcu struct {
	Version, Name, DestinationType, RequestMethod, RequestURL string
	Headers                                                   map[string]string
	Body, FileFormName, URL, ErrorMessage                     string
}

func TestShareXConfig(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	q := url.Values{"baseUrl": {e.srv.URL + "/"}, "apiKey": {"sk_live_abc123"}}
	resp, body := e.get("/api/user/sharex-config?" + q.Encode())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if cd := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") || !strings.Contains(cd, `.sxcu"`) {
		t.Fatalf("Content-Disposition %q", cd)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("a file with a key in it must not be cached: %q", resp.Header.Get("Cache-Control"))
	}
	var cfg sxcu
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	want := sxcu{
		Version: "16.1.0", Name: "127.0.0.1", DestinationType: "ImageUploader", RequestMethod: "POST",
		RequestURL: e.srv.URL + "/api/external/upload", Headers: map[string]string{"Authorization": "Bearer sk_live_abc123"},
		Body: "MultipartFormData", FileFormName: "image", URL: "{json:url}", ErrorMessage: "{json:error}",
	}
	if cfg.Version != want.Version || cfg.Name != want.Name || cfg.DestinationType != want.DestinationType ||
		cfg.RequestMethod != want.RequestMethod || cfg.RequestURL != want.RequestURL || len(cfg.Headers) != 1 ||
		cfg.Headers["Authorization"] != want.Headers["Authorization"] || cfg.Body != want.Body ||
		cfg.FileFormName != want.FileFormName || cfg.URL != want.URL || cfg.ErrorMessage != want.ErrorMessage {
		t.Fatalf("config\n%+v\nwant\n%+v", cfg, want)
	}

	// Use the file as ShareX does: POST the file in FileFormName to
	// RequestURL with Headers, then take {json:url} from the answer.
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, _ := mw.CreateFormFile(cfg.FileFormName, "screenshot.png")
	img := pngBytes(t)
	_, _ = fw.Write(img)
	_ = mw.Close()
	req, _ := http.NewRequest(cfg.RequestMethod, cfg.RequestURL, &form)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	for k, v := range cfg.Headers {
		req.Header.Set(k, v)
	}
	// What the gateway adds after checking the bearer key:
	req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
	req.Header.Set("X-Keygate-Key-Id", "key-1")
	up, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(up.Body)
	up.Body.Close()
	if up.StatusCode/100 != 2 {
		t.Fatalf("upload: %d %s", up.StatusCode, out)
	}
	field := strings.TrimSuffix(strings.TrimPrefix(cfg.URL, "{json:"), "}")
	link, _ := decode(t, out)[field].(string)
	img2req, _ := http.NewRequest("GET", link, nil)
	img2req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
	got, err := e.client.Do(img2req)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(got.Body)
	got.Body.Close()
	if got.StatusCode != 200 || !bytes.Equal(served, img) || got.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("GET %s: %d %q, %d bytes", link, got.StatusCode, got.Header.Get("Content-Type"), len(served))
	}
}

func TestShareXConfigPathPrefix(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	q := url.Values{"baseUrl": {"https://files.example.com/slink///"}, "apiKey": {"k"}}
	resp, body := e.get("/api/user/sharex-config?" + q.Encode())
	m := decode(t, body)
	if resp.StatusCode != 200 || m["RequestURL"] != "https://files.example.com/slink/api/external/upload" || m["Name"] != "files.example.com" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestShareXConfigErrors(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	for _, c := range []struct {
		base, key string
		err       string
	}{
		{"", "k", "Invalid baseUrl"},
		{"not a url", "k", "Invalid baseUrl"},
		{"ftp://files.example.com", "k", "Invalid baseUrl"},
		{"javascript:alert(1)", "k", "Invalid baseUrl"},
		{"https://", "k", "Invalid baseUrl"},
		{"/relative/path", "k", "Invalid baseUrl"},
		{"https://user:pw@files.example.com", "k", "Invalid baseUrl"},
		{"https://files.example.com/?x=1", "k", "Invalid baseUrl"},
		{"https://files.example.com/#frag", "k", "Invalid baseUrl"},
		{`https://files"example.com`, "k", "Invalid baseUrl"},
		{"https://files.example.com", "", "Invalid apiKey"},
		{"https://files.example.com", "bad key", "Invalid apiKey"},
		{"https://files.example.com", "k\r\nX-Evil: 1", "Invalid apiKey"},
	} {
		q := url.Values{"baseUrl": {c.base}, "apiKey": {c.key}}
		resp, body := e.get("/api/user/sharex-config?" + q.Encode())
		wantProblem(t, resp, body, http.StatusBadRequest, c.err)
	}
}
