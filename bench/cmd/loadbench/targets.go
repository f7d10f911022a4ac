package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// The targets the benchmark is held to (issue 5): keygate serves at least
// targetRatio of plain Caddy's requests per second, with a p50 no more
// than targetP50 above plain Caddy's.
const (
	targetRatio = 0.90
	targetP50   = 150 * time.Microsecond
)

// targetRow is what targets reads of a row of the results.
type targetRow struct {
	conns  int
	rounds []float64 // keygate/plain of each round; the row's ratio is their medianRatio
	dp50   time.Duration
}

// targets says, per connection count, how many of rows meet each target,
// and the mean ratio with its 95 % interval (meanInterval): the ratios of
// single rows swing by several hundredths from run to run on a shared
// machine (-control shows how far), so the mean says more than any one
// row, and its interval how far this run's rounds let it move. The mean is
// geometric, as a mean of ratios must be: an arithmetic one of 2.0 and 0.5
// says 1.25 whichever proxy was the faster.
func targets[T any](rows []T, of func(T) targetRow) string {
	type tally struct {
		n, ratioMet, p50Met int
		rounds              [][]float64
	}
	var order []int
	by := map[int]*tally{}
	for _, r := range rows {
		tr := of(r)
		t := by[tr.conns]
		if t == nil {
			t = &tally{}
			by[tr.conns] = t
			order = append(order, tr.conns)
		}
		ratio := medianRatio(tr.rounds)
		t.n++
		t.rounds = append(t.rounds, tr.rounds)
		if ratio >= targetRatio {
			t.ratioMet++
		}
		if tr.dp50 <= targetP50 {
			t.p50Met++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "targets: ratio >= %.2f and p50 within %s of plain Caddy's\n", targetRatio, fmtDur(targetP50))
	for _, c := range order {
		t := by[c]
		lo, hi := meanInterval(t.rounds)
		fmt.Fprintf(&b, "  %3d conns: ratio met in %d of %d rows (mean %.3f, 95%% interval %.3f-%.3f), p50 in %d of %d\n",
			c, t.ratioMet, t.n, meanRatio(t.rounds), lo, hi, t.p50Met, t.n)
	}
	return b.String()
}

// meanInterval is a 95 % bootstrap interval of the geometric mean of
// rows' ratios, each row's ratio the medianRatio of its rounds: each
// resample draws every row's rounds again, with replacement, from the same
// row. Rounds are what the machine's noise moves, so the interval is how
// far the mean could land in another run like this one (with five rounds a
// row, somewhat narrower than the truth: a bootstrap of few samples
// underestimates their spread). The draws are seeded, so the same rounds
// print the same interval.
func meanInterval(rows [][]float64) (lo, hi float64) {
	const resamples = 2000
	rng := rand.New(rand.NewPCG(1, 2))
	means := make([]float64, resamples)
	rows = slices.DeleteFunc(slices.Clone(rows), func(rounds []float64) bool { return len(rounds) == 0 })
	if len(rows) == 0 {
		return 0, 0
	}
	drawn := make([][]float64, len(rows))
	for i := range means {
		for j, rounds := range rows {
			drawn[j] = drawn[j][:0]
			for range rounds {
				drawn[j] = append(drawn[j], rounds[rng.IntN(len(rounds))])
			}
		}
		means[i] = meanRatio(drawn)
	}
	slices.Sort(means)
	return means[resamples*25/1000], means[resamples*975/1000-1]
}

// meanRatio is the geometric mean of rows' ratios, each row's the
// medianRatio of its rounds.
func meanRatio(rows [][]float64) float64 {
	logSum := 0.0
	for _, rounds := range rows {
		logSum += math.Log(medianRatio(rounds))
	}
	return math.Exp(logSum / float64(len(rows)))
}

// medianRatio is the median of ratios, taken as ratios must be: of an even
// count, the geometric mean of the middle two, so that the median of the
// inverse ratios is the inverse of the median.
func medianRatio(ratios []float64) float64 {
	if len(ratios) == 0 {
		return 0
	}
	return math.Exp(medianBy(ratios, math.Log))
}
