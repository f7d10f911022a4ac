package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			_, _ = w.Write([]byte(`{"secret":"never printed"}`))
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()

	if err := check([]string{srv.URL + "/ok"}, time.Second); err != nil {
		t.Fatalf("healthy: %v", err)
	}
	for path, status := range map[string]string{"/down": "503", "/redirect": "302"} {
		err := check([]string{srv.URL + path}, time.Second)
		if err == nil || !strings.Contains(err.Error(), status) {
			t.Errorf("%s: error %v, want one naming status %s", path, err, status)
		}
		if err != nil && strings.Contains(err.Error(), "down\n") {
			t.Errorf("%s: the error repeats the body: %v", path, err)
		}
	}
	if err := check(nil, time.Second); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("no argument: %v", err)
	}
	srv.Close()
	if err := check([]string{srv.URL + "/ok"}, time.Second); err == nil {
		t.Error("closed server: no error")
	}
}
