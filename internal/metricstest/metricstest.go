// Package metricstest reads a gateway's Prometheus metrics in tests.
package metricstest

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

var client = &http.Client{Timeout: 10 * time.Second}

// StoreCalls reads keygate_store_duration_seconds_count{op="<op>"}, the
// store calls of that kind a gateway has made, from the /metrics of the
// admin API at adminAddr (host:port). It fails the test when the series
// is missing.
func StoreCalls(tb testing.TB, adminAddr, op string) int {
	tb.Helper()
	resp, err := client.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	prefix := `keygate_store_duration_seconds_count{op="` + op + `"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				tb.Fatalf("metric %q", sc.Text())
			}
			return n
		}
	}
	tb.Fatalf("/metrics has no %s", prefix)
	return 0
}
