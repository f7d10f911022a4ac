package main

import (
	"testing"
	"time"
)

func TestTargetsCountsRowsPerConnectionCount(t *testing.T) {
	type row struct {
		conns int
		ratio float64
		dp50  time.Duration
	}
	rows := []row{
		{8, 0.95, 20 * time.Microsecond},
		{64, 0.91, 400 * time.Microsecond},
		{8, 0.88, 150 * time.Microsecond}, // exactly on the p50 target: met
		{64, 0.90, -time.Millisecond},     // exactly on the ratio target: met
	}
	got := targets(rows, func(r row) (int, float64, time.Duration) { return r.conns, r.ratio, r.dp50 })
	want := "targets: ratio >= 0.90 and p50 within 0.150ms of plain Caddy's\n" +
		"    8 conns: ratio met in 1 of 2 rows (mean 0.915), p50 in 2 of 2\n" +
		"   64 conns: ratio met in 2 of 2 rows (mean 0.905), p50 in 1 of 2\n"
	if got != want {
		t.Errorf("targets:\n%s\nwant:\n%s", got, want)
	}
}
