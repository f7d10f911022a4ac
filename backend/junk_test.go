package backend_test

import (
	"strings"
	"testing"
)

// TestJunkNeverFails throws malformed input at every endpoint: the answer is
// always a 4xx problem, never a 500 or a dropped connection.
func TestJunkNeverFails(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	bodies := []string{
		"", "null", "0", `""`, "[]", "{", `{"url":{}}`, `{"url":["x"]}`, `{"url":"\u0000"}`,
		`{"encryptedBlob":null,"iv":null,"expiryType":null}`, `{"slug":{"$ne":1}}`,
		strings.Repeat("[", 10000), "\xff\xfe\xfd", `{"url":"https://[::1`,
		`{"url":"http://%41:8080/"}`, `{"url":"https://example.com/\ud800"}`,
	}
	paths := []string{
		"/api/external/upload", "/api/shortlinks", "/api/shorten", "/api/v1/secrets",
		"/api/v1/secrets/A1b2C3d4E5f6/report", "/api/user/sharex-config?baseUrl=%zz&apiKey=%00",
		"/api/v1/secrets/%00%00", "/i/%00.png", "/%ff%fe",
	}
	ctypes := []string{"", "application/json", "multipart/form-data; boundary=", "multipart/form-data; boundary=x", "text/plain; charset=utf-8"}
	for _, p := range paths {
		for _, method := range []string{"GET", "POST"} {
			for _, b := range bodies {
				for _, ct := range ctypes {
					resp, out := e.do(method, p, []byte(b), ct)
					if resp.StatusCode >= 500 || resp.StatusCode < 400 && !(resp.StatusCode == 202 || resp.StatusCode == 201 || resp.StatusCode == 200) {
						t.Fatalf("%s %s %q (%q): %d %s", method, p, b, ct, resp.StatusCode, out)
					}
					if resp.StatusCode >= 400 && resp.Header.Get("Content-Type") != "application/problem+json" {
						t.Fatalf("%s %s %q: %d with %q", method, p, b, resp.StatusCode, resp.Header.Get("Content-Type"))
					}
				}
			}
		}
	}
}
