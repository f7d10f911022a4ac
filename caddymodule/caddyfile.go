package keygate

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/caddymodule/store"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("keygate", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("keygate", parseHandler)
	// Authentication comes first, so keygate works outside route blocks.
	httpcaddyfile.RegisterDirectiveOrder("keygate", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("keygate_errors", parseErrorRenderer)
	httpcaddyfile.RegisterDirectiveOrder("keygate_errors", httpcaddyfile.Before, "respond")
}

// parseGlobalOption sets up the keygate app from the global option. Syntax:
//
//	keygate {
//		redis <url>                 # default (or ""): embedded store in Caddy's data dir
//		redis_cluster [true|false]  # <url> names a Redis Cluster node (more: ?addr=host:port&addr=...)
//		redis_sentinel <master>     # <url> names a Sentinel (more: ?addr=...) monitoring <master>; "": none
//		on_store_error closed|open  # default: closed
//		timeout <duration>          # at least 1ms; default: 500ms
//		fail_open_grace <duration>  # default: 5m
//	}
//
// Given twice, it is an error: Caddy keeps the last, and a second block
// (from an import, say) would silently drop the first's redis. So is an
// option given twice in the block.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the keygate global option is given more than once; merge the blocks")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "keygate", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens; see
// parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	var given onlyOnce
	for d.NextBlock(0) {
		if err := given.check(d); err != nil {
			return err
		}
		switch d.Val() {
		case "redis":
			if !d.AllArgs(&a.Redis) {
				return d.ArgErr()
			}
		case "redis_cluster":
			// an argument lets the stack's Caddyfile set it from the
			// environment ("{$KEYGATE_REDIS_CLUSTER:false}"); one that is
			// empty (the variable set to nothing) is false, as the
			// backend reads BACKEND_REDIS_CLUSTER
			a.RedisCluster = true
			if d.NextArg() {
				on, err := strconv.ParseBool(d.Val())
				if err != nil && d.Val() != "" {
					return d.Errf("redis_cluster takes true or false, not %q", d.Val())
				}
				a.RedisCluster = on
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "redis_sentinel":
			if !d.AllArgs(&a.RedisSentinel) {
				return d.ArgErr()
			}
		case "on_store_error":
			if !d.AllArgs(&a.OnStoreError) {
				return d.ArgErr()
			}
			if a.OnStoreError != storeErrorClosed && a.OnStoreError != storeErrorOpen {
				return d.Errf("on_store_error must be closed or open, not %q", a.OnStoreError)
			}
		case "timeout", "fail_open_grace":
			name := d.Val()
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return d.Errf("%s: bad duration %q", name, s)
			}
			if name == "timeout" {
				if dur < minStoreTimeout {
					return d.Errf("timeout %v is below %v: every store call would time out", dur, minStoreTimeout)
				}
				a.Timeout = caddy.Duration(dur)
			} else {
				a.FailOpenGrace = caddy.Duration(dur)
			}
		default:
			return d.Errf("unrecognized keygate option: %s", d.Val())
		}
	}
	return nil
}

// parseHandler sets up the keygate handler from Caddyfile tokens. Syntax:
//
//	keygate [<matcher>] {
//		rate_limit <requests> <window>   # per key; a key's own limit wins
//		ignore_key_limits                # ... but not here: every key gets rate_limit
//		zone       <name>                # counters of this zone's routes only (default: shared by limit)
//		anonymous  <requests> <window>   # let keyless callers in, limited per client IP
//		roles      <role...>             # the key must hold one of them, else 403
//		algorithm  sliding_window|sliding_log
//		keep_credentials                 # pass Authorization / X-API-Key upstream
//		lease      <requests>            # admit up to this many per store round trip (see Handler.Lease)
//		rate_limit_headers both|x-ratelimit|ietf|none   # default both
//		rate_limit_message <text>        # a 429's "error" (default Short Link's)
//	}
//
// Each subdirective but roles (whose lists add up) is given at most once:
// a second rate_limit, from an import say, would silently replace the
// first.
func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens; see
// parseHandler for the syntax.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	var given onlyOnce
	for d.NextBlock(0) {
		if d.Val() != "roles" {
			if err := given.check(d); err != nil {
				return err
			}
		}
		switch d.Val() {
		case "rate_limit":
			r, err := parseRateArgs(d)
			if err != nil {
				return err
			}
			h.RateLimit = r
		case "anonymous":
			r, err := parseRateArgs(d)
			if err != nil {
				return err
			}
			h.Anonymous = r
		case "roles":
			h.Roles = append(h.Roles, d.RemainingArgs()...)
			if len(h.Roles) == 0 {
				return d.ArgErr()
			}
			if err := validRoles(h.Roles); err != nil {
				return d.Err(err.Error())
			}
		case "algorithm":
			var a string
			if !d.AllArgs(&a) {
				return d.ArgErr()
			}
			h.Algorithm = store.Algorithm(a)
			if !h.Algorithm.Valid() {
				return d.Errf("algorithm must be sliding_window or sliding_log, not %q", a)
			}
		case "keep_credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.KeepCredentials = true
		case "zone":
			if !d.AllArgs(&h.Zone) {
				return d.ArgErr()
			}
			if !validZone(h.Zone) || h.Zone == "" {
				return d.Errf("zone %q: lowercase letters, digits and _ . - only, 1 to %d", h.Zone, maxZoneLength)
			}
		case "ignore_key_limits":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.IgnoreKeyLimits = true
		case "lease":
			var n string
			if !d.AllArgs(&n) {
				return d.ArgErr()
			}
			lease, err := strconv.ParseInt(n, 10, 64)
			if err != nil || lease < 0 || lease > maxLease {
				return d.Errf("lease must be a whole number of requests, at most %d, not %q", maxLease, n)
			}
			h.Lease = lease
		case "rate_limit_message":
			if !d.AllArgs(&h.RateLimitMessage) {
				return d.ArgErr()
			}
			if h.RateLimitMessage == "" || !validMessage(h.RateLimitMessage) {
				return d.Errf("rate_limit_message: 1 to %d printable ASCII characters", maxMessageLength)
			}
		case "rate_limit_headers":
			if !d.AllArgs(&h.RateLimitHeaders) {
				return d.ArgErr()
			}
			if _, err := rateLimitHeaderSet(h.RateLimitHeaders); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized keygate subdirective: %s", d.Val())
		}
	}
	if err := rolesWithAnonymous(h); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// onlyOnce refuses an option given a second time in one block, where the
// last would silently win.
type onlyOnce map[string]bool

func (o *onlyOnce) check(d *caddyfile.Dispenser) error {
	if *o == nil {
		*o = onlyOnce{}
	}
	if (*o)[d.Val()] {
		return d.Errf("%s is given more than once", d.Val())
	}
	(*o)[d.Val()] = true
	return nil
}

// parseRateArgs reads "<requests> <window>".
func parseRateArgs(d *caddyfile.Dispenser) (*Rate, error) {
	name := d.Val()
	var n, w string
	if !d.AllArgs(&n, &w) {
		return nil, d.ArgErr()
	}
	requests, err := strconv.ParseInt(n, 10, 64)
	if err != nil || requests <= 0 {
		return nil, d.Errf("%s: requests must be a positive whole number, not %q", name, n)
	}
	window, err := caddy.ParseDuration(w)
	if err != nil || window <= 0 {
		return nil, d.Errf("%s: bad window %q", name, w)
	}
	r := &Rate{Requests: requests, Window: caddy.Duration(window)}
	if err := r.validate(name); err != nil {
		return nil, d.Err(err.Error())
	}
	return r, nil
}

// parseErrorRenderer sets up keygate_errors. Syntax, inside handle_errors:
//
//	keygate_errors
func parseErrorRenderer(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h.Next() // consume directive name
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	if h.NextBlock(0) {
		return nil, h.Err("keygate_errors takes no block")
	}
	return ErrorRenderer{}, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
