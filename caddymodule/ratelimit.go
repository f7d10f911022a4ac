package keygate

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// Rate-limit response headers, in two styles: the X-RateLimit-* trio that
// existing clients read (Reset in Unix milliseconds, as Shorturlx documents
// it), and the IETF httpapi draft's structured fields. Handler's
// RateLimitHeaders picks which go out; Retry-After goes with every 429.
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

// Values of Handler.RateLimitHeaders.
const (
	RateLimitHeadersBoth       = "both"
	RateLimitHeadersXRateLimit = "x-ratelimit"
	RateLimitHeadersIETF       = "ietf"
	RateLimitHeadersNone       = "none"
)

// headerSet is which styles of rate-limit headers a handler sends.
type headerSet uint8

const (
	sendXRateLimit headerSet = 1 << iota
	sendIETF
)

// rateLimitHeaderSet reads a RateLimitHeaders value; "" is the default,
// both.
func rateLimitHeaderSet(v string) (headerSet, error) {
	switch v {
	case "", RateLimitHeadersBoth:
		return sendXRateLimit | sendIETF, nil
	case RateLimitHeadersXRateLimit:
		return sendXRateLimit, nil
	case RateLimitHeadersIETF:
		return sendIETF, nil
	case RateLimitHeadersNone:
		return 0, nil
	}
	return 0, fmt.Errorf("rate_limit_headers must be %s, %s, %s or %s, not %q",
		RateLimitHeadersBoth, RateLimitHeadersXRateLimit, RateLimitHeadersIETF, RateLimitHeadersNone, v)
}

// policyHeader renders a RateLimit-Policy field value, e.g.
// `"key";q=100;w=600`. It depends only on the policy, so handlers compute
// their default one once.
func policyHeader(name string, p store.Policy) string {
	return `"` + name + `";q=` + strconv.FormatInt(p.Limit, 10) + ";w=" + strconv.FormatInt(ceilSeconds(p.Window), 10)
}

// setRateLimitHeaders writes the headers of one decision: those of the
// styles in send, and Retry-After when refused. Every limited response
// pays for this, so all values are rendered into one buffer and converted
// to one string, and the header slices share one backing array: two
// allocations instead of one per value and one per slice.
func setRateLimitHeaders(h http.Header, send headerSet, name, policy string, d store.Decision, now time.Time) {
	if send == 0 && d.Allowed {
		return
	}
	var buf [128]byte
	b := strconv.AppendInt(buf[:0], d.Limit, 10)
	endLimit := len(b)
	b = strconv.AppendInt(b, d.Remaining, 10)
	endRemaining := len(b)
	b = strconv.AppendInt(b, d.Reset.UnixMilli(), 10)
	endReset := len(b)
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, d.Remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, ceilSeconds(d.Reset.Sub(now)), 10)
	endRateLimit := len(b)
	if !d.Allowed {
		b = strconv.AppendInt(b, max(1, ceilSeconds(d.RetryAfter)), 10)
	}
	s := string(b)

	values := make([]string, 6)
	set := func(i int, key, value string) {
		values[i] = value
		h[key] = values[i : i+1 : i+1]
	}
	if send&sendXRateLimit != 0 {
		set(0, headerLimit, s[:endLimit])
		set(1, headerRemaining, s[endLimit:endRemaining])
		set(2, headerReset, s[endRemaining:endReset])
	}
	if send&sendIETF != 0 {
		set(3, headerPolicy, policy)
		set(4, headerRateLimit, s[endReset:endRateLimit])
	}
	if !d.Allowed {
		set(5, headerRetryAfter, s[endRateLimit:])
	}
}

// ceilSeconds rounds d up to whole seconds, never below zero.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
