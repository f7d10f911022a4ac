package backend_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUploadAndServe(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		for _, c := range []struct {
			name, mime, ext string
			data            []byte
		}{
			{"png", "image/png", "png", pngBytes(t)},
			{"jpeg", "image/jpeg", "jpg", jpegBytes(t)},
			{"gif", "image/gif", "gif", gifBytes(t)},
			{"webp", "image/webp", "webp", webpBytes()},
		} {
			t.Run(c.name, func(t *testing.T) {
				// The client's name and type are lies; neither is trusted.
				body, ctype := multipartBody(t, "image", "../../etc/passwd.txt", c.data)
				resp, out := e.do("POST", "/api/external/upload", body, ctype, forwarded("https", "img.example.com"))
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("upload: %d %s", resp.StatusCode, out)
				}
				m := decode(t, out)
				id, _ := m["id"].(string)
				wantURL := "https://img.example.com/i/" + id + "." + c.ext
				if len(id) != 20 || m["url"] != wantURL || m["size"] != float64(len(c.data)) || m["mime"] != c.mime {
					t.Fatalf("response %s, want url %s", out, wantURL)
				}
				if resp.Header.Get("Location") != wantURL {
					t.Fatalf("Location %q", resp.Header.Get("Location"))
				}
				// Only the published file is in the image directory: no
				// temp leftovers, nothing named after the client's file.
				entries, err := os.ReadDir(filepath.Join(e.dataDir, "images"))
				if err != nil {
					t.Fatal(err)
				}
				for _, en := range entries {
					if strings.HasPrefix(en.Name(), ".") || strings.Contains(en.Name(), "passwd") {
						t.Fatalf("unexpected file %q", en.Name())
					}
				}

				u, _ := url.Parse(m["url"].(string))
				resp, got := e.get(u.Path, anonymous)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(got, c.data) {
					t.Fatalf("GET image: %d, %d bytes", resp.StatusCode, len(got))
				}
				h := resp.Header
				if h.Get("Content-Type") != c.mime || h.Get("X-Content-Type-Options") != "nosniff" ||
					!strings.Contains(h.Get("Cache-Control"), "max-age=31536000") {
					t.Fatalf("image headers %v", h)
				}
				resp, got = e.do("HEAD", u.Path, nil, "", anonymous)
				if resp.StatusCode != http.StatusOK || len(got) != 0 || resp.ContentLength != int64(len(c.data)) {
					t.Fatalf("HEAD image: %d, len %d", resp.StatusCode, resp.ContentLength)
				}
			})
		}
	})
}

func TestUploadBaseURLFallsBackToHost(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	body, ctype := multipartBody(t, "image", "a.png", pngBytes(t))
	// A forged host with a path or quote in it is ignored.
	resp, out := e.do("POST", "/api/external/upload", body, ctype, header("X-Forwarded-Host", "evil.example/x\""))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if u := decode(t, out)["url"].(string); !strings.HasPrefix(u, e.srv.URL+"/i/") {
		t.Fatalf("url %q, want it on %s", u, e.srv.URL)
	}
}

func TestUploadErrors(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{maxUpload: 4 << 10})
	text, textType := multipartBody(t, "image", "a.png", []byte("just some text pretending to be a PNG"))
	svg, svgType := multipartBody(t, "image", "a.svg", []byte(`<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>`))
	html, htmlType := multipartBody(t, "image", "a.png", []byte(`<html><script>alert(1)</script></html>`))
	other, otherType := multipartBody(t, "file", "a.png", pngBytes(t))
	none, noneType := multipartBody(t, "", "", nil)
	empty, emptyType := multipartBody(t, "image", "a.png", nil)
	big := append(pngBytes(t), bytes.Repeat([]byte{0}, 5<<10)...)
	bigBody, bigType := multipartBody(t, "image", "a.png", big)
	exact := append(pngBytes(t), bytes.Repeat([]byte{0}, 4<<10-len(pngBytes(t)))...)
	exactBody, exactType := multipartBody(t, "image", "a.png", exact)
	truncated := append([]byte(nil), exactBody[:len(exactBody)-40]...)
	small, smallType := multipartBody(t, "image", "a.png", pngBytes(t)[:60])
	smallTruncated := small[:bytes.Index(small, pngBytes(t)[:60])+30] // cut inside the image part

	for _, c := range []struct {
		name   string
		body   []byte
		ctype  string
		status int
		err    string
	}{
		{"text", text, textType, 415, "Unsupported image type"},
		{"svg", svg, svgType, 415, "Unsupported image type"},
		{"html", html, htmlType, 415, "Unsupported image type"},
		{"other field", other, otherType, 400, "Missing image"},
		{"no file", none, noneType, 400, "Missing image"},
		{"empty file", empty, emptyType, 400, "Empty image"},
		{"json body", []byte(`{"image":"x"}`), "application/json", 400, "Missing image"},
		{"no content type", pngBytes(t), "", 400, "Missing image"},
		{"no boundary", text, "multipart/form-data", 400, "Missing image"},
		{"garbage multipart", []byte("garbage"), textType, 400, "Invalid multipart body"},
		{"truncated", truncated, exactType, 400, "Invalid multipart body"},
		{"truncated small", smallTruncated, smallType, 400, "Invalid multipart body"},
		{"too big", bigBody, bigType, 413, "Image too large"},
	} {
		resp, out := e.do("POST", "/api/external/upload", c.body, c.ctype)
		if resp.StatusCode != c.status {
			t.Fatalf("%s: %d %s, want %d", c.name, resp.StatusCode, out, c.status)
		}
		wantProblem(t, resp, out, c.status, c.err)
	}
	// Exactly at the limit is fine.
	resp, out := e.do("POST", "/api/external/upload", exactBody, exactType)
	if resp.StatusCode != http.StatusCreated || decode(t, out)["size"] != float64(4<<10) {
		t.Fatalf("at the limit: %d %s", resp.StatusCode, out)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dataDir, "images"))
	if len(entries) != 1 {
		t.Fatalf("%d files in the image directory after one success, want 1", len(entries))
	}
}

// TestUploadTooLargeNotRead announces a body far over the limit and sends
// only its first bytes: the 413 must come without the server waiting for
// (or reading) the rest.
// A failure of the server's own (here its image directory gone) is a 500
// with SecLink's words for it, not a 4xx blaming the client.
func TestUploadServerFailure(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	if err := os.RemoveAll(filepath.Join(e.dataDir, "images")); err != nil {
		t.Fatal(err)
	}
	body, ctype := multipartBody(t, "image", "a.png", pngBytes(t))
	resp, out := e.do("POST", "/api/external/upload", body, ctype)
	wantProblem(t, resp, out, http.StatusInternalServerError, "Server encountered a problem")
}

func TestUploadTooLargeNotRead(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{maxUpload: 1 << 20})
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /api/external/upload HTTP/1.1\r\nHost: x\r\n"+
		"X-Keygate-Upstream-Secret: %s\r\nContent-Type: multipart/form-data; boundary=b\r\n"+
		"Content-Length: %d\r\n\r\n--b\r\n", testSecret, int64(1)<<34)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response before the body was sent: %v", err)
	}
	out, _ := io.ReadAll(resp.Body)
	wantProblem(t, resp, out, http.StatusRequestEntityTooLarge, "Image too large")
}

// TestUploadTooLargeChunked: without a Content-Length the limit is enforced
// while streaming.
func TestUploadTooLargeChunked(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{maxUpload: 8 << 10})
	big := append(pngBytes(t), bytes.Repeat([]byte{1}, 64<<10)...)
	body, ctype := multipartBody(t, "image", "a.png", big)
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/external/upload", io.MultiReader(bytes.NewReader(body)))
	req.ContentLength = -1 // chunked
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	wantProblem(t, resp, out, http.StatusRequestEntityTooLarge, "Image too large")
	entries, _ := os.ReadDir(filepath.Join(e.dataDir, "images"))
	if len(entries) != 0 {
		t.Fatalf("files left after a refused upload: %v", entries)
	}
}

// An image's ranges and preconditions are served as net/http serves
// files, and their refusals are problem+json like every error.
func TestImageRangesAndPreconditions(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	data := pngBytes(t)
	body, ctype := multipartBody(t, "image", "a.png", data)
	resp, out := e.do("POST", "/api/external/upload", body, ctype, forwarded("https", "img.example.com"))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, out)
	}
	u, _ := url.Parse(decode(t, out)["url"].(string))

	resp, got := e.get(u.Path, anonymous, header("Range", "bytes=0-3"))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[:4]) {
		t.Fatalf("Range bytes=0-3: %d, %q", resp.StatusCode, got)
	}
	resp, got = e.get(u.Path, anonymous, header("Range", "bytes=99999999-"))
	wantProblem(t, resp, got, http.StatusRequestedRangeNotSatisfiable, "Range not satisfiable")
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes */%d", len(data)) {
		t.Errorf("416 Content-Range %q, want the size", cr)
	}
	if cc := resp.Header.Get("Cache-Control"); strings.Contains(cc, "max-age") {
		t.Errorf("416 Cache-Control %q: a refusal is not the image, not to be cached as it", cc)
	}
	resp, got = e.get(u.Path, anonymous, header("If-Match", `"x"`))
	wantProblem(t, resp, got, http.StatusPreconditionFailed, "Precondition failed")
}

func TestImagePaths(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	for _, p := range []string{
		"/i/AAAAAAAAAAAAAAAAAAAA.png", // well-formed, absent
		"/i/AAAAAAAAAAAAAAAAAAAA.exe",
		"/i/AAAAAAAAAAAAAAAAAAAA",
		"/i/short.png",
		"/i/..%2Fbackend.db",
		"/i/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
		"/i/.upload-123",
	} {
		resp, body := e.get(p, anonymous)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, body)
		}
	}
}
