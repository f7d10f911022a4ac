package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// accuracy runs three keygate instances on one Redis and fires many
// concurrent requests with one key, spread over the instances, at a route
// limited to -accuracy-limit per minute; it reports how many were admitted.
// sliding_log must admit exactly the limit; sliding_window is exact within
// one fixed window (the trials avoid the last seconds of the key's window,
// where the weighted previous window would come into play).
func accuracy(ctx context.Context, procs *procSet, dir, redisURL, upstream string) error {
	limit := *flagAccLimit
	rate := strconv.FormatInt(limit, 10) + " 1m"
	var gws []*proxy
	for i := range 3 {
		p, err := startProxy(ctx, procs, dir, "keygate"+strconv.Itoa(i+1), "keygate", true, redisURL, upstream, rate)
		if err != nil {
			return err
		}
		gws = append(gws, p)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *flagAccConc, MaxConnsPerHost: *flagAccConc}}

	type trial struct {
		alg                      string
		n                        int
		admitted, limited, other int64
	}
	var trials []trial
	for t := range *flagAccTrial {
		keys, ids, err := createKeys(ctx, gws[0].admin, 1, "accuracy-"+strconv.Itoa(t)+"-")
		if err != nil {
			return err
		}
		offset := store.WindowOffset('k', ids[0], time.Minute)
		for _, alg := range algorithms {
			// Stay inside one of the key's fixed windows: the whole burst
			// takes well under a second, so start at least 5 s before the
			// window ends.
			if left := untilWindowEnd(time.Now(), offset, time.Minute); left < 5*time.Second {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(left + time.Second):
				}
			}
			tr := trial{alg: alg, n: *flagAccReqs}
			var next atomic.Int64
			var wg sync.WaitGroup
			startGate := make(chan struct{})
			for range *flagAccConc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-startGate
					for {
						i := int(next.Add(1) - 1)
						if i >= tr.n || ctx.Err() != nil {
							return
						}
						gw := gws[i%len(gws)]
						req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+gw.addr+"/"+alg+"/x", nil)
						req.Header.Set("Authorization", "Bearer "+keys[0])
						resp, err := client.Do(req)
						if err != nil {
							atomic.AddInt64(&tr.other, 1)
							continue
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						switch resp.StatusCode {
						case 200:
							atomic.AddInt64(&tr.admitted, 1)
						case 429:
							atomic.AddInt64(&tr.limited, 1)
						default:
							atomic.AddInt64(&tr.other, 1)
						}
					}
				}()
			}
			close(startGate)
			wg.Wait()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			logf("trial %d %-14s admitted %d of %d (limit %d), 429: %d, other: %d", t+1, alg, tr.admitted, tr.n, limit, tr.limited, tr.other)
			trials = append(trials, tr)
		}
	}
	fmt.Printf("\naccuracy: 3 keygate instances on one Redis, %d concurrent clients, %d requests per trial on one key, limit %d/min\n\n",
		*flagAccConc, *flagAccReqs, limit)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "algorithm\ttrial\trequests\tadmitted\tlimit\t429\tother\t")
	// Without leases sliding_log must admit exactly the limit. With leases
	// no algorithm may admit more; fewer is the documented cost.
	ok := true
	for i, tr := range trials {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", tr.alg, i/len(algorithms)+1, tr.n, tr.admitted, limit, tr.limited, tr.other)
		switch {
		case tr.other > 0:
			ok = false
		case *flagLease > 0 && tr.admitted > limit:
			ok = false
		case *flagLease == 0 && tr.alg == "sliding_log" && tr.admitted != limit:
			ok = false
		}
	}
	tw.Flush()
	if *flagLease > 0 {
		if !ok {
			return fmt.Errorf("with lease %d, a trial admitted more than the limit, or some requests failed", *flagLease)
		}
		fmt.Printf("\nwith lease %d, no trial admitted more than the limit\n", *flagLease)
		return nil
	}
	if !ok {
		return fmt.Errorf("sliding_log did not admit exactly the limit, or some requests failed")
	}
	fmt.Println("\nsliding_log admitted exactly the limit in every trial")
	return nil
}

// untilWindowEnd is how long before the fixed window that holds now ends,
// for windows of a subject starting at offset within each period of window
// (store.WindowOffset), as the sliding_window script reckons them.
func untilWindowEnd(now time.Time, offset, window time.Duration) time.Duration {
	ms, w := now.UnixMilli(), window.Milliseconds()
	return time.Duration(store.WindowStart(ms, offset.Milliseconds(), w)+w-ms) * time.Millisecond
}
