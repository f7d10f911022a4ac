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
// admin API at adminAddr (host:port).
func StoreCalls(tb testing.TB, adminAddr, op string) int {
	tb.Helper()
	return int(Value(tb, adminAddr, `keygate_store_duration_seconds_count{op="`+op+`"}`))
}

// Value reads one series, named as /metrics prints it (with its labels),
// from the /metrics of the admin API at adminAddr (host:port). It fails
// the test when the series is missing.
func Value(tb testing.TB, adminAddr, series string) float64 {
	tb.Helper()
	v, ok := find(tb, adminAddr, series)
	if !ok {
		tb.Fatalf("/metrics has no %s", series)
	}
	return v
}

// Counter is Value for a counter with labels, which /metrics lists only
// from its first increment: 0 until then.
func Counter(tb testing.TB, adminAddr, series string) float64 {
	tb.Helper()
	v, _ := find(tb, adminAddr, series)
	return v
}

func find(tb testing.TB, adminAddr, series string) (float64, bool) {
	tb.Helper()
	resp, err := client.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("metric %q", sc.Text())
			}
			return n, true
		}
	}
	return 0, false
}
