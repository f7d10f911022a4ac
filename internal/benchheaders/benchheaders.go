// Package benchheaders is what keygate adds to a benchmark's exchange, as
// Caddyfile directives that have plain Caddy send the same: the load
// benchmark's -same-headers and BenchmarkThroughCaddy compare keygate with
// plain Caddy configured so, which says what keygate costs beyond the
// headers the products' clients read. Both take them from here, so they
// stay alike, and alike what keygate sends for the benchmarks' keys.
//
// Each line starts with the indent given: Caddy warns of a Caddyfile whose
// indentation is not its own format's.
package benchheaders

import "strings"

// Limit is the limit of keygate's routes in the benchmarks, as the
// Caddyfile's rate_limit and anonymous take it: high enough that no run is
// ever refused. Response's values are what it gives.
const Limit = "1000000000 1m"

// Response is a header directive that sets the rate-limit headers keygate
// sets under the benchmarks' Limit (10⁹ requests a minute), with values as
// long as those their requests get, for a key's limit or, anonymous, a
// client IP's: set before reverse_proxy, as keygate sets them. style is
// keygate's rate_limit_headers ("" is its default, both); with none it
// returns "".
func Response(indent string, anonymous bool, style string) string {
	name := "key"
	if anonymous {
		name = "ip"
	}
	ls := []string{"header {"}
	if style == "" || style == "both" || style == "x-ratelimit" {
		ls = append(ls,
			"\tX-Ratelimit-Limit 1000000000",
			"\tX-Ratelimit-Remaining 999999999",
			"\tX-Ratelimit-Reset 1764650000000")
	}
	if style == "" || style == "both" || style == "ietf" {
		ls = append(ls,
			"\tRatelimit-Policy `\""+name+"\";q=1000000000;w=60`",
			"\tRatelimit `\""+name+"\";r=999999999;t=60`")
	}
	if len(ls) == 1 {
		return ""
	}
	return lines(indent, append(ls, "}")...)
}

// Upstream is the reverse_proxy subdirectives that change the request sent
// on as keygate does: the key removed and the identity headers added (a
// 16-character key id, a name like the benchmarks' keys'; they have no
// roles and no owner, for which keygate sends no header), or for an
// anonymous request the anonymous marker.
func Upstream(indent string, anonymous bool) string {
	if anonymous {
		return lines(indent, "header_up X-Keygate-Anonymous true")
	}
	return lines(indent,
		"header_up -Authorization",
		"header_up X-Keygate-Key-Id 0123456789abcdef",
		"header_up X-Keygate-Key-Name bench-1234")
}

// lines joins ls, each indented and ending in a newline.
func lines(indent string, ls ...string) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(indent + l + "\n")
	}
	return b.String()
}
