package keygate

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/caddymodule/store"
)

// Rate is a rate limit in config: at most Requests in any Window.
type Rate struct {
	// Requests is how many requests the window admits. Required, from 1
	// to 10^15 (store.MaxLimit).
	Requests int64 `json:"requests"`
	// Window is the length of the sliding window, e.g. "10m". Required.
	Window caddy.Duration `json:"window"`
}

func (r *Rate) policy() store.Policy {
	if r == nil {
		return store.Policy{}
	}
	return store.Policy{Limit: r.Requests, Window: time.Duration(r.Window)}
}

func (r *Rate) validate(what string) error {
	if r == nil {
		return nil
	}
	if r.Requests <= 0 || r.Requests > store.MaxLimit {
		return fmt.Errorf("%s: requests must be from 1 to %d, got %d", what, int64(store.MaxLimit), r.Requests)
	}
	if time.Duration(r.Window) < time.Millisecond {
		return fmt.Errorf("%s: window must be at least 1ms, got %s", what, time.Duration(r.Window))
	}
	if time.Duration(r.Window)%time.Millisecond != 0 {
		// the stores count in milliseconds: 1500us would be 1ms
		return fmt.Errorf("%s: window must be whole milliseconds, got %s", what, time.Duration(r.Window))
	}
	return nil
}

// parseRate reads "<requests>/<window>", e.g. "10000/1h" or "20/1m"; the
// window takes Caddy's durations (so "1d" works too).
func parseRate(s string) (store.Policy, error) {
	n, w, ok := strings.Cut(s, "/")
	if !ok {
		return store.Policy{}, fmt.Errorf("rate limit %q is not <requests>/<window>, e.g. 10000/1h", s)
	}
	limit, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
	if err != nil || limit <= 0 {
		return store.Policy{}, fmt.Errorf("rate limit %q: requests must be a positive whole number", s)
	}
	if limit > store.MaxLimit {
		return store.Policy{}, fmt.Errorf("rate limit %q: requests must be at most %d", s, int64(store.MaxLimit))
	}
	window, err := caddy.ParseDuration(strings.TrimSpace(w))
	if err != nil || window < time.Millisecond || window%time.Millisecond != 0 {
		return store.Policy{}, fmt.Errorf("rate limit %q: window must be a duration of at least 1ms, in whole milliseconds, e.g. 1h", s)
	}
	return store.Policy{Limit: limit, Window: window}, nil
}

// formatRate renders a policy the way parseRate reads it.
func formatRate(p store.Policy) string {
	if p.IsZero() {
		return ""
	}
	return strconv.FormatInt(p.Limit, 10) + "/" + formatWindow(p.Window)
}

// formatWindow renders a window in its largest whole unit: "1h", "10m",
// "30s", "1500ms".
func formatWindow(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if d >= u.d && d%u.d == 0 {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name
		}
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}
