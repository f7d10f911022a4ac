package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/redisstore"
	"github.com/keygate/keygate/internal/redistest"
)

// addReports stores n reports (secret ids AAAAAAAAAAR0, R1, ...) in st and
// closes it.
func addReports(t *testing.T, st store.Store, n int) {
	t.Helper()
	defer st.Close()
	for i := range n {
		r := store.Report{SecretID: fmt.Sprintf("AAAAAAAAAAR%d", i), Reason: "spam", Reporter: "anonymous", CreatedAt: time.Now().UTC()}
		if err := st.AddReport(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
}

// reportIDs runs `backend reports args...` and returns the secret ids of
// the reports it printed, in order.
func reportIDs(t *testing.T, env map[string]string, args ...string) []string {
	t.Helper()
	var out bytes.Buffer
	if err := reports(context.Background(), args, envMap(env), &out, io.Discard); err != nil {
		t.Fatalf("reports %q: %v", args, err)
	}
	var ids []string
	dec := json.NewDecoder(&out)
	for dec.More() {
		var r store.Report
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("reports printed %q: %v", out.String(), err)
		}
		ids = append(ids, r.SecretID)
	}
	return ids
}

// `backend reports` prints the newest abuse reports, oldest first, from
// either store, found as the backend finds it.
func TestReportsCommand(t *testing.T) {
	data := t.TempDir()
	st, err := boltstore.Open(filepath.Join(data, "backend.db"), boltstore.Options{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	addReports(t, st, 5)
	if got := strings.Join(reportIDs(t, nil, "-data", data, "-n", "2"), " "); got != "AAAAAAAAAAR3 AAAAAAAAAAR4" {
		t.Errorf("embedded store, -n 2: %s", got)
	}
	if got := reportIDs(t, map[string]string{"BACKEND_DATA_DIR": data}); len(got) != 5 {
		t.Errorf("embedded store from BACKEND_DATA_DIR: %d reports, want 5", len(got))
	}

	srv := redistest.Start(t)
	rst, err := redisstore.Open(context.Background(), srv.URL(), redisstore.DefaultPrefix, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	addReports(t, rst, 3)
	if got := strings.Join(reportIDs(t, map[string]string{"BACKEND_REDIS_URL": srv.URL()}, "-n", "2"), " "); got != "AAAAAAAAAAR1 AAAAAAAAAAR2" {
		t.Errorf("redis, -n 2: %s", got)
	}
}

func TestReportsCommandFailsClearly(t *testing.T) {
	data := t.TempDir()
	startBackend(t, "-data", data) // holds the embedded store's lock
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-data", data}, "locked by another process"},
		{[]string{"-data", filepath.Join(data, "missing")}, "no embedded store"},
		{[]string{"-data", data, "-n", "0"}, "-n must be at least 1"},
		{[]string{"-data", data, "extra"}, "unexpected arguments"},
	} {
		err := reports(context.Background(), c.args, envMap(nil), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("reports %q: %v, want an error saying %q", c.args, err, c.want)
		}
	}
	// a directory without a store is left without one
	empty := t.TempDir()
	if err := reports(context.Background(), []string{"-data", empty}, envMap(nil), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "no embedded store") {
		t.Errorf("reports -data <an empty directory>: %v, want an error saying there is no embedded store", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) > 0 {
		t.Errorf("reports -data <an empty directory> left %v in it", entries)
	}
}
