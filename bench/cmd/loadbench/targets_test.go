package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestTargetsCountsRowsPerConnectionCount(t *testing.T) {
	rows := []targetRow{
		{conns: 8, rounds: []float64{0.95}, dp50: 20 * time.Microsecond},
		{conns: 64, rounds: []float64{0.91}, dp50: 400 * time.Microsecond},
		{conns: 8, rounds: []float64{0.88}, dp50: 150 * time.Microsecond}, // exactly on the p50 target: met
		{conns: 64, rounds: []float64{0.90}, dp50: -time.Millisecond},     // exactly on the ratio target: met
	}
	got := targets(rows, func(r targetRow) targetRow { return r })
	want := "targets: ratio >= 0.90 and p50 within 0.150ms of plain Caddy's\n" +
		"    8 conns: ratio met in 1 of 2 rows (mean 0.914, 95% interval 0.914-0.914), p50 in 2 of 2\n" +
		"   64 conns: ratio met in 2 of 2 rows (mean 0.905, 95% interval 0.905-0.905), p50 in 1 of 2\n"
	if got != want {
		t.Errorf("targets:\n%s\nwant:\n%s", got, want)
	}
}

// A mean of ratios says the same whichever proxy was the faster: rows of
// 2.0 and 0.5 (or rounds of them) average to 1.0, not 1.25.
func TestMeanRatioIsGeometric(t *testing.T) {
	got := targets([]targetRow{{conns: 8, rounds: []float64{2}}, {conns: 8, rounds: []float64{0.5}}},
		func(r targetRow) targetRow { return r })
	if !strings.Contains(got, "mean 1.000, 95% interval 1.000-1.000") {
		t.Errorf("rows of 2.0 and 0.5:\n%s", got)
	}
	if m := medianRatio([]float64{2, 0.5}); math.Abs(m-1) > 1e-9 {
		t.Errorf("median of rounds 2.0 and 0.5: %v, want 1", m)
	}
}

func TestMeanIntervalFollowsTheRoundsSpread(t *testing.T) {
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	steady := [][]float64{{0.95, 0.95, 0.95}, {0.91, 0.91, 0.91}}
	gm := math.Sqrt(0.95 * 0.91)
	if lo, hi := meanInterval(steady); !near(lo, gm) || !near(hi, gm) {
		t.Errorf("rounds that agree: interval %.4f-%.4f, want %.4f-%.4f", lo, hi, gm, gm)
	}
	// one row's rounds spread from 0.80 to 1.10 (median 0.95), the other's
	// agree (0.91): the (geometric) mean, 0.93, lies inside an interval of
	// some width, no wider than the spread allows
	spread := []float64{0.80, 0.90, 0.95, 1.00, 1.10}
	steadyRow := []float64{0.91, 0.91, 0.91, 0.91, 0.91}
	lo, hi := meanInterval([][]float64{spread, steadyRow})
	if !(lo < gm && gm < hi) || hi-lo < 0.02 || lo < math.Sqrt(0.80*0.91)-1e-9 || hi > math.Sqrt(1.10*0.91)+1e-9 {
		t.Errorf("one noisy row: interval %.4f-%.4f, want one around %.4f within 0.853-1.001", lo, hi, gm)
	}
	if lo2, hi2 := meanInterval([][]float64{spread, steadyRow}); lo2 != lo || hi2 != hi {
		t.Errorf("the same rounds gave %.4f-%.4f, then %.4f-%.4f", lo, hi, lo2, hi2)
	}
	// six rows as noisy: their noise averages out in the mean
	six := [][]float64{spread, spread, spread, spread, spread, spread}
	if lo6, hi6 := meanInterval(six); !(lo6 < 0.95 && 0.95 < hi6) || hi6-lo6 >= 2*(hi-lo) {
		t.Errorf("six noisy rows: interval %.4f-%.4f, want one around 0.95 narrower than one row's (%.4f)", lo6, hi6, 2*(hi-lo))
	}
	if lo, hi := meanInterval([][]float64{{}}); lo != 0 || hi != 0 {
		t.Errorf("no rounds: %v-%v", lo, hi)
	}
}
