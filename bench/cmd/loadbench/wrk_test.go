package main

import (
	"strings"
	"testing"
	"time"
)

// wrk's --latency output, as wrk 4.1 prints it: units us, ms and s, the
// last padded with a space.
const wrkOutput = `Running 2s test @ http://127.0.0.1:8080/sliding_window/x
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms    1.30ms  30.00ms   90.00%
    Req/Sec     3.50k   200.00     4.00k    70.00%
  Latency Distribution
     50%  456.00us
     75%    1.00ms
     90%   12.34ms
     99%    1.23s 
  14000 requests in 2.00s, 2.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 2, timeout 4
Requests/sec:   6999.50
Transfer/sec:      1.00MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	want := result{rps: 6999.50, requests: 14000, p50: 456 * time.Microsecond, p99: 1230 * time.Millisecond, non2xx: 3, errors: 7}
	if r.rps != want.rps || r.requests != want.requests || r.p50 != want.p50 || r.p99 != want.p99 || r.non2xx != want.non2xx || r.errors != want.errors {
		t.Errorf("parsed %+v, want %+v", r, want)
	}
	// without --latency's distribution there is no p50 to compare
	noDistribution := strings.Replace(wrkOutput, "     50%  456.00us\n", "", 1)
	if _, err := parseWrk(noDistribution); err == nil || !strings.Contains(err.Error(), "latency") {
		t.Errorf("output without a 50%% line: %v, want an error", err)
	}
}
