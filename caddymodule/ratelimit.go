package keygate

import (
	"net/http"
	"strconv"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// Rate-limit response headers. Both styles are sent: the X-RateLimit-*
// trio that existing clients read (Reset in Unix milliseconds, as Shorturlx
// documents it), and the IETF httpapi draft's structured fields.
const (
	headerLimit       = "X-Ratelimit-Limit"
	headerRemaining   = "X-Ratelimit-Remaining"
	headerReset       = "X-Ratelimit-Reset"
	headerPolicy      = "Ratelimit-Policy"
	headerRateLimit   = "Ratelimit"
	headerRetryAfter  = "Retry-After"
	policyNameKey     = "key"
	policyNameAddress = "ip"
)

// policyHeader renders a RateLimit-Policy field value, e.g.
// `"key";q=100;w=600`. It depends only on the policy, so handlers compute
// their default one once.
func policyHeader(name string, p store.Policy) string {
	return `"` + name + `";q=` + strconv.FormatInt(p.Limit, 10) + ";w=" + strconv.FormatInt(ceilSeconds(p.Window), 10)
}

// setRateLimitHeaders writes the headers of one decision.
func setRateLimitHeaders(h http.Header, name, policy string, d store.Decision, now time.Time) {
	var buf [20]byte
	h[headerLimit] = []string{string(strconv.AppendInt(buf[:0], d.Limit, 10))}
	h[headerRemaining] = []string{string(strconv.AppendInt(buf[:0], d.Remaining, 10))}
	h[headerReset] = []string{string(strconv.AppendInt(buf[:0], d.Reset.UnixMilli(), 10))}
	h[headerPolicy] = []string{policy}
	reset := ceilSeconds(d.Reset.Sub(now))
	b := make([]byte, 0, 40)
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, d.Remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, reset, 10)
	h[headerRateLimit] = []string{string(b)}
	if !d.Allowed {
		h[headerRetryAfter] = []string{string(strconv.AppendInt(buf[:0], max(1, ceilSeconds(d.RetryAfter)), 10))}
	}
}

// ceilSeconds rounds d up to whole seconds, never below zero.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
