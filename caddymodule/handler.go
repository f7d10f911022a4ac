package keygate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler authenticates requests by API key, rate limits them per key (or
// per client IP for anonymous callers), and tells the upstream who called.
//
// A request it lets through has lost the credential headers (unless
// keep_credentials) and any X-Keygate-* header the client sent, and carries
// X-Keygate-Key-Id, X-Keygate-Key-Name, and X-Keygate-Roles and
// X-Keygate-Owner when the key has roles or an owner (or
// X-Keygate-Anonymous: true). The same values are the placeholders
// {keygate.key.id}, {keygate.key.name}, {keygate.key.roles},
// {keygate.key.owner}, {keygate.key.prefix}, {keygate.anonymous} and
// {http.auth.user.id}.
//
// A request it refuses gets an error (401, 403, 429, 400 or 503) that
// handle_errors { keygate_errors } renders as problem+json.
type Handler struct {
	// RateLimit limits each key on this route. A key created with its own
	// limit uses that instead, unless IgnoreKeyLimits. Counters are shared
	// by every route with the same limit, window, algorithm and Zone.
	// Default: no per-key limit.
	RateLimit *Rate `json:"rate_limit,omitempty"`

	// Zone names this route's counters. Routes in one zone (and without
	// one, all of them) share a key's counter when their limit, window and
	// algorithm match, and a client IP's likewise: one budget however many
	// routes it covers. Routes in different zones never share one, so two
	// products behind one gateway each have their own budget, whatever
	// their limits. Lowercase letters, digits and _ . -, at most 64.
	// Default: none.
	Zone string `json:"zone,omitempty"`

	// IgnoreKeyLimits holds every key to RateLimit on this route, a key
	// created with a limit of its own too: for a route whose limit is part
	// of its contract (Short Link's 20 requests a minute), where a key's
	// own limit is another product's tier. Without RateLimit, keys are then
	// not limited here. Default: false, a key's own limit wins.
	IgnoreKeyLimits bool `json:"ignore_key_limits,omitempty"`

	// Anonymous lets requests without any key through, limited per client
	// IP (per /64 for IPv6) at this rate. The client IP honours the
	// server's trusted_proxies. A request with a bad key is still refused.
	// Default: unset, a key is required.
	Anonymous *Rate `json:"anonymous,omitempty"`

	// Roles, when set, require the key to hold at least one of them; other
	// keys get 403. Default: any valid key.
	Roles []string `json:"roles,omitempty"`

	// Algorithm is "sliding_window" (default: a weighted two-window counter,
	// O(1) memory) or "sliding_log" (exact, one entry per admitted request).
	Algorithm store.Algorithm `json:"algorithm,omitempty"`

	// KeepCredentials passes Authorization / X-API-Key on to the upstream.
	// Default: false, they are removed, so the secret neither reaches the
	// upstream nor what later handlers log. (Caddy's request logs copy the
	// request before any handler runs: they need a log filter, README
	// Operations.)
	KeepCredentials bool `json:"keep_credentials,omitempty"`

	// Lease lets this gateway take up to this many requests of a limit
	// from the store in one round trip and admit them itself for at most a
	// minute: until the window ends (sliding_window), or each until the
	// moment the store logged it, staggered across the lease (sliding_log),
	// and refills it in the background before it runs out, holding at most
	// twice this many with what its refills ask for (or a hundredth of the
	// limit, if more); see lease.go. Routes with the same lease and
	// algorithm share this gateway's leases, as they share the store's
	// counters, across config reloads too.
	// Limits still hold across every gateway; the costs are that requests
	// leased but unused in time were counted, that X-RateLimit-Remaining
	// reflects other gateways only at each lease, and that a disabled,
	// deleted or rotated key may keep working for about a quarter of a
	// second (a second at worst: epoch.go). Only worth it on Redis.
	// Default: 0, every request is validated and counted in the store; 1
	// is the same (a lease of one is the request itself). At most
	// 1,000,000.
	Lease int64 `json:"lease,omitempty"`

	// RateLimitMessage is the "error" member of this route's 429s, for
	// clients that read the text of the product they speak to: SecLink's
	// doc says "You have exceeded your rate limit". At most 200 printable
	// ASCII characters. Default: Short Link's "Too much request. Try again
	// later."
	RateLimitMessage string `json:"rate_limit_message,omitempty"`

	// RateLimitHeaders is which rate-limit headers limited responses carry:
	// "both" (default), "x-ratelimit" (X-RateLimit-Limit, -Remaining and
	// -Reset, which the replaced products' clients read), "ietf" (the IETF
	// draft's RateLimit-Policy and RateLimit), or "none". Every 429 carries
	// Retry-After whatever this says. Each header costs every hop that
	// handles it (README, Performance).
	RateLimitHeaders string `json:"rate_limit_headers,omitempty"`

	app           *App
	keyPolicy     store.Policy
	keyPolicyHdr  string
	anonPolicy    store.Policy
	anonPolicyHdr string
	headers       headerSet
	logger        *zap.Logger
	lastStoreLog  *atomic.Int64 // a pointer: modules are copied by value
	lastPathLog   *atomic.Int64 // secondOnPath's, likewise
	leases        *leaseTable   // nil without Lease
	watchesEpoch  bool          // polls the store's epoch (attach)
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.keygate",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler and attaches it to the keygate app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	app, err := ctx.App("keygate")
	if err != nil {
		return fmt.Errorf("loading keygate app: %v", err)
	}
	h.attach(app.(*App))
	return nil
}

// attach connects the handler to its app and precomputes what every
// request would otherwise recompute.
func (h *Handler) attach(app *App) {
	h.app = app
	h.lastStoreLog = new(atomic.Int64)
	h.lastPathLog = new(atomic.Int64)
	if h.Algorithm == "" {
		h.Algorithm = store.SlidingWindow
	}
	h.headers, _ = rateLimitHeaderSet(h.RateLimitHeaders) // Validate refuses a bad value
	h.keyPolicy = h.RateLimit.policy()
	if !h.keyPolicy.IsZero() {
		h.keyPolicy.Zone = h.Zone
		h.keyPolicyHdr = policyHeader(policyNameKey, h.keyPolicy)
	}
	h.anonPolicy = h.Anonymous.policy()
	if !h.anonPolicy.IsZero() {
		h.anonPolicy.Zone = h.Zone
		h.anonPolicyHdr = policyHeader(policyNameAddress, h.anonPolicy)
	}
	if h.Lease > 1 {
		h.leases = app.shared.leases.get(h.Lease, h.Algorithm, time.Duration(app.Timeout))
	}
	// Leases are used only while the epoch says no key changed; failing
	// open lets through only keys validated since this gateway last
	// learned of a change, made through any gateway (epoch.go).
	if h.watchesEpoch = h.leases != nil || app.OnStoreError == storeErrorOpen; h.watchesEpoch {
		app.shared.epochs.acquire(app.shared, time.Duration(app.Timeout))
	}
}

// Cleanup lets go of what attach took: the epoch's polling stops with
// the last handler watching it, and a table of leases with the last
// handler using it.
func (h *Handler) Cleanup() error {
	if h.watchesEpoch {
		h.app.shared.epochs.release()
	}
	if h.leases != nil {
		h.app.shared.leases.release(h.Lease, h.Algorithm)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if !h.Algorithm.Valid() {
		return fmt.Errorf("algorithm must be %q or %q, not %q", store.SlidingWindow, store.SlidingLog, h.Algorithm)
	}
	if err := h.RateLimit.validate("rate_limit"); err != nil {
		return err
	}
	if !validMessage(h.RateLimitMessage) {
		return fmt.Errorf("rate_limit_message: at most %d printable ASCII characters", maxMessageLength)
	}
	if !validZone(h.Zone) {
		return fmt.Errorf("zone %q: lowercase letters, digits and _ . - only, at most %d", h.Zone, maxZoneLength)
	}
	if h.Lease < 0 || h.Lease > maxLease {
		return fmt.Errorf("lease must be 0 to %d requests, got %d", maxLease, h.Lease)
	}
	if _, err := rateLimitHeaderSet(h.RateLimitHeaders); err != nil {
		return err
	}
	if err := validRoles(h.Roles); err != nil {
		return err
	}
	if err := rolesWithAnonymous(h); err != nil {
		return err
	}
	return h.Anonymous.validate("anonymous")
}

// rolesWithAnonymous refuses a route with both: a key without the role
// would be refused, and its caller let through by leaving the key out.
func rolesWithAnonymous(h *Handler) error {
	if len(h.Roles) > 0 && h.Anonymous != nil {
		return errors.New("roles and anonymous exclude each other: a caller without a key would pass where a key without the role is refused; put them on separate routes")
	}
	return nil
}

// maxMessageLength bounds rate_limit_message.
const maxMessageLength = 200

// validMessage accepts a rate_limit_message: printable ASCII, as any
// client can show.
func validMessage(m string) bool {
	return len(m) <= maxMessageLength && allBytes(m, printableASCII)
}

// maxZoneLength bounds a zone's name, which names Redis keys.
const maxZoneLength = 64

// validZone accepts "" (no zone) and names of [a-z0-9_.-]: safe in a Redis
// key's name, and never a hash tag's braces.
func validZone(z string) bool {
	return len(z) <= maxZoneLength && allBytes(z, func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
	})
}

// allBytes reports whether ok holds for every byte of s.
func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// maxLease bounds the lease option: far beyond any use (a lease is at most
// a minute of a key's traffic), and far from overflowing the arithmetic of
// a lease's deadlines.
const maxLease = 1_000_000

// validRoles checks a route's roles: a key's roles are [a-z0-9_.:-]
// (validRole), so any other role could never be held, and the route would
// refuse every key.
func validRoles(roles []string) error {
	for _, r := range roles {
		if !validRole(r) {
			return fmt.Errorf("role %q can never match: a key's roles are lowercase letters, digits and _ . : -", r)
		}
	}
	return nil
}

// ServeHTTP is the path of every request through the gateway.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	// Nothing the client sends may pose as the gateway's word.
	stripped := stripIdentityHeaders(r.Header)
	if r.Trailer != nil {
		stripIdentityTrailers(r)
	}

	cred := credentialFrom(r.Header)
	if !h.KeepCredentials {
		cred.strip(r.Header)
	}
	switch {
	case cred.conflicted:
		return h.refuse(outcomeConflict, problemConflictingKeys)
	case !cred.present():
		if stripped && admittedEarlier(repl) {
			return h.secondOnPath()
		}
		if h.Anonymous == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="keygate"`)
			return h.refuse(outcomeMissing, problemMissingKey)
		}
		return h.serveAnonymous(w, r, repl, next)
	case !apikey.WellFormed(cred.key):
		w.Header().Set("WWW-Authenticate", `Bearer realm="keygate", error="invalid_token"`)
		return h.refuse(outcomeMalformed, problemMalformedKey)
	}
	return h.serveKey(w, r, repl, next, apikey.Sum(cred.key))
}

// serveKey handles a request with a well-formed key.
func (h *Handler) serveKey(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, next caddyhttp.Handler, hash apikey.Hash) error {
	ctx := r.Context()
	shared := h.app.shared
	now := time.Now()

	entry, knownUnknown := shared.keys.get(hash, now)
	if entry == nil {
		if knownUnknown {
			return h.refuseInvalid(w)
		}
		// Cold path: first sight of this key on this gateway.
		start := time.Now()
		id, err := shared.KeyIDByHash(ctx, hash)
		h.app.metrics.observeStore(storeLookup, start, err)
		switch {
		case errors.Is(err, store.ErrNotFound):
			shared.keys.markUnknown(hash, now)
			return h.refuseInvalid(w)
		case err != nil:
			return h.storeUnavailable(w, err)
		}
		entry = shared.keys.put(hash, id)
		// the lookup may have taken up to the store timeout; a lease that
		// another request got meanwhile is checked against the time now
		now = time.Now()
	}

	ident := entry.record.Load()
	if ident.key.Revision > 0 && ident.key.Enabled && !ident.key.Expired(now) && !ident.hasAnyRole(h.Roles) {
		// refused before it costs a token; a key known disabled or
		// expired is the store's to refuse (401, as on a gateway that has
		// not seen it), not a role's
		return h.refuseLackingRole(ctx, w, entry, hash)
	}

	if h.leases != nil && ident.key.Revision > 0 && !ident.key.Expired(now) {
		// A lease was granted while the key was valid, and take uses it
		// only while no key has changed since (epoch.go). Expiry is known
		// here, so it is checked exactly.
		if policy, policyHdr := h.policyFor(ident); !policy.IsZero() {
			lk := keyLease(ident.key, policy)
			d, at, ahead, ok, err := h.fromLease(ctx, lk, now)
			switch {
			case err != nil:
				return h.storeFailed(w, r, repl, next, err, entry, ident, now)
			case ok:
				if ahead != nil {
					go h.refillKeyAhead(lk, ahead, entry, hash)
				}
				return h.admitKey(w, r, repl, next, ident, policy, policyHdr, d, at)
			}
			now = at
		}
	}

	var verdict store.Verdict
	var policy store.Policy
	var policyHdr string
	var lk leaseKey
	var epoch int64
	var ask store.Ask
	var start time.Time
	var err error
	for attempt := 0; ; attempt++ {
		policy, policyHdr = h.policyFor(ident)
		start = time.Now()
		ask = store.Ask{}
		if h.leases != nil && !policy.IsZero() {
			lk = keyLease(ident.key, policy)
			var fresh bool
			epoch, fresh = shared.epochs.current(start) // read before the grant
			if fresh {
				// unconfirmed, the epoch lets no lease be used: none is
				// asked for, to be counted and lapse
				ask = h.leases.want(lk, start, epoch)
			}
		}
		verdict, err = h.checkKey(askContext(ctx, ask), start, ident.key.ID, hash, ident.key.Revision, policy, ask)
		if err != nil || verdict.Fresh == nil {
			break
		}
		ident = newIdentity(verdict.Fresh)
		entry.record.Store(ident)
		if fresh, _ := h.policyFor(ident); attempt > 0 || verdict.Status != store.KeyValid || fresh == policy {
			break
		}
		// The record came back with a limit of its own (first sight of the
		// key, or its limit changed): count the request against that one.
	}
	if err != nil {
		return h.storeFailed(w, r, repl, next, err, entry, ident, now)
	}
	switch verdict.Status {
	case store.KeyValid:
	case store.KeyUnknown:
		shared.keys.markUnknown(hash, now)
		return h.refuseInvalid(w)
	default: // disabled or expired: kept in cache, the store says so each time
		return h.refuseInvalid(w)
	}
	if !ident.hasAnyRole(h.Roles) {
		return h.refuseRole(w)
	}
	entry.validatedAt.Store(now.UnixNano())

	// the headers' seconds to the reset count from the store's answer,
	// which a slow store may have given well after the request arrived
	decided := time.Now()
	d := verdict.Limit
	if h.leases != nil && !policy.IsZero() {
		// the grant is the record's the store validated: a fresh one
		// that came back with it, if any
		lk.revision = ident.key.Revision
		d = h.leases.put(lk, d, ask, start, epoch, decided)
		h.app.metrics.leased(d)
	}
	return h.admitKey(w, r, repl, next, ident, policy, policyHdr, d, decided)
}

// admitKey finishes a request whose key is valid, with the rate-limit
// decision d (from the store or a lease): the rate-limit headers when a
// limit applies, 429 when over it, else the identity headers and on.
func (h *Handler) admitKey(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, next caddyhttp.Handler,
	ident *identity, policy store.Policy, policyHdr string, d store.Decision, now time.Time) error {
	if !policy.IsZero() {
		setRateLimitHeaders(w.Header(), h.headers, policyNameKey, policyHdr, d, now)
		if !d.Allowed {
			return h.refuse(outcomeLimited, problemRateLimited(policy, d.RetryAfter, h.rateLimitedMessage()))
		}
	}
	ident.inject(r.Header, repl)
	h.app.metrics.decision(outcomeAllowed).Inc()
	return next.ServeHTTP(w, r)
}

// storeFailed finishes a keyed request whose store call failed with err:
// 503, or with on_store_error open, a key this gateway validated recently
// passes, unlimited, until the store is back; unless its record, as the
// store last gave it, says it is disabled or expired since (401), or it
// was validated before this gateway last learned of a key change (503).
func (h *Handler) storeFailed(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, next caddyhttp.Handler,
	err error, entry *cachedKey, ident *identity, now time.Time) error {
	if !h.failOpen(err, entry, now) {
		return h.storeUnavailable(w, err)
	}
	if !ident.key.Enabled || ident.key.Expired(now) {
		return h.refuseInvalid(w)
	}
	if entry.validatedAt.Load() <= h.app.shared.epochs.changedAt.Load() {
		// validated before this gateway last learned of a key change: it
		// may be the key that changed (a rotated-away or deleted secret)
		return h.storeUnavailable(w, err)
	}
	ident.inject(r.Header, repl)
	h.app.metrics.decision(outcomeFailOpen).Inc()
	return next.ServeHTTP(w, r)
}

// rateLimitedMessage is the error message of this route's 429s.
func (h *Handler) rateLimitedMessage() string {
	if h.RateLimitMessage != "" {
		return h.RateLimitMessage
	}
	return defaultRateLimitedMessage
}

// policyFor is the limit a key is held to on this route: its own (unless
// IgnoreKeyLimits), else the route's. The second result is its
// RateLimit-Policy header value.
func (h *Handler) policyFor(ident *identity) (store.Policy, string) {
	if ident.ownPolicyHdr != "" && !h.IgnoreKeyLimits {
		own := ident.key.RateLimit
		own.Zone = h.Zone
		return own, ident.ownPolicyHdr
	}
	return h.keyPolicy, h.keyPolicyHdr
}

// serveAnonymous handles a request without a key on a route that allows
// that, limiting it per client IP.
func (h *Handler) serveAnonymous(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, next caddyhttp.Handler) error {
	d, now, err := h.limitAnonymous(r.Context(), clientSubject(r), time.Now())
	if err != nil {
		// Unknown callers have nothing to fail open on.
		return h.storeUnavailable(w, err)
	}
	setRateLimitHeaders(w.Header(), h.headers, policyNameAddress, h.anonPolicyHdr, d, now)
	if !d.Allowed {
		return h.refuse(outcomeLimited, problemRateLimited(h.anonPolicy, d.RetryAfter, h.rateLimitedMessage()))
	}
	injectAnonymous(r.Header, repl)
	h.app.metrics.decision(outcomeAnonymous).Inc()
	return next.ServeHTTP(w, r)
}

// limitAnonymous takes one request from subject's limit: from this
// gateway's lease when it holds one (fromLease), else from the store. It
// returns when the decision was taken (now, or later after a wait for a
// refill or the store's answer), for the headers' seconds to the reset.
func (h *Handler) limitAnonymous(ctx context.Context, subject string, now time.Time) (store.Decision, time.Time, error) {
	lk := leaseKey{kind: 's', subject: subject, policy: h.anonPolicy}
	var ask store.Ask
	if h.leases != nil {
		d, at, ahead, ok, err := h.fromLease(ctx, lk, now)
		switch {
		case err != nil:
			return store.Decision{}, now, err
		case ok:
			if ahead != nil {
				go h.refillAnonymousAhead(lk, ahead)
			}
			return d, at, nil
		}
		now = at
		ask = h.leases.want(lk, now, 0)
	}
	d, err := h.limitSubject(askContext(ctx, ask), now, subject, ask)
	decided := time.Now()
	if err == nil && h.leases != nil {
		d = h.leases.put(lk, d, ask, now, 0, decided)
		h.app.metrics.leased(d)
	}
	return d, decided, err
}

// fromLease admits a request from this gateway's lease lk at now, if it
// holds one (ok), with the decision and when it was taken: later than now
// when the request found the lease spent and waited for the refill on its
// way, once (err: that refill's store call failed, or the request ended).
// ahead is a refill ahead that the caller is to start. A key's lease is
// used only under the store's current epoch (epoch.go); an anonymous
// subject has no key to revoke.
func (h *Handler) fromLease(ctx context.Context, lk leaseKey, now time.Time) (d store.Decision, at time.Time, ahead *refill, ok bool, err error) {
	for waited := false; ; waited = true {
		epoch, fresh := int64(0), true
		if lk.kind == 'k' {
			epoch, fresh = h.app.shared.epochs.current(now)
		}
		d, ok, pending := h.leases.take(lk, now, epoch, fresh)
		if ok {
			h.app.metrics.leased(d)
			return d, now, pending, true, nil
		}
		if pending == nil || waited {
			return store.Decision{}, now, nil, false, nil
		}
		if err := h.awaitRefill(ctx, pending); err != nil {
			return store.Decision{}, now, nil, false, err
		}
		now = time.Now()
	}
}

// askContext is the context of a request's store call that asks for ask:
// one that asks for a lease is not cut short by the request's client
// leaving. The store counts the lease whether or not its answer is awaited,
// so a lease given up would be requests counted and never admitted (and
// other requests kept from asking for one, lease.asking, for a second).
// The store's own timeout still bounds the call.
func askContext(ctx context.Context, ask store.Ask) context.Context {
	if ask.Take > 1 {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// checkKey is a keyed request's store call (or its lease's refill,
// refill.go): validate the key and take ask from policy, in one round trip.
// It began at start, for the store-call metrics.
func (h *Handler) checkKey(ctx context.Context, start time.Time, keyID string, hash apikey.Hash, revision int64, policy store.Policy, ask store.Ask) (store.Verdict, error) {
	v, err := h.app.shared.CheckKey(ctx, store.Check{
		KeyID:     keyID,
		Hash:      hash,
		Revision:  revision,
		Policy:    policy,
		Algorithm: h.Algorithm,
		Ask:       ask,
	})
	h.app.metrics.observeStore(storeCheck, start, err)
	return v, err
}

// limitSubject is an anonymous request's store call (or its lease's
// refill): take ask from subject's limit. It began at start.
func (h *Handler) limitSubject(ctx context.Context, start time.Time, subject string, ask store.Ask) (store.Decision, error) {
	d, err := h.app.shared.Limit(ctx, subject, h.anonPolicy, h.Algorithm, ask)
	h.app.metrics.observeStore(storeLimit, start, err)
	return d, err
}

// clientSubject is the rate-limit subject of an anonymous caller: its IP as
// Caddy determined it (honouring trusted_proxies), IPv6 grouped by /64,
// since one host routinely holds a whole /64.
func clientSubject(r *http.Request) string {
	ipStr, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	ip, err := netip.ParseAddr(ipStr)
	if err != nil {
		return "ip:" + ipStr
	}
	// built in a buffer on the stack: one allocation, the string itself
	var buf [len("ip6:") + len("ffff:ffff:ffff:ffff::/64")]byte
	ip = ip.Unmap()
	if ip.Is6() {
		prefix, _ := ip.WithZone("").Prefix(64)
		return string(prefix.AppendTo(append(buf[:0], "ip6:"...)))
	}
	return string(ip.AppendTo(append(buf[:0], "ip:"...)))
}

// failOpen reports whether a keyed request may pass while the store is
// down: only with on_store_error open, only for a key this gateway
// validated within fail_open_grace, and not when the call ended because
// the client left (the store is not known to be down).
func (h *Handler) failOpen(err error, entry *cachedKey, now time.Time) bool {
	if h.app.OnStoreError != storeErrorOpen || clientLeft(err) {
		return false
	}
	validated := entry.validatedAt.Load()
	// not "validated" later than now: a clock stepped back would stretch
	// the grace by the step
	return validated > 0 && validated <= now.UnixNano() && now.Sub(time.Unix(0, validated)) <= time.Duration(h.app.FailOpenGrace)
}

// clientGone ends a request whose client left while it waited for the
// store (its context was cancelled): not a store outage, so neither logged
// nor counted as one (storeUnavailable), and never let through under
// on_store_error open (failOpen). 499, as reverse_proxy says of a client
// that closed its request.
func (h *Handler) clientGone(err error) error {
	h.app.metrics.decision(outcomeClientGone).Inc()
	return caddyhttp.Error(statusClientClosedRequest, err)
}

// clientLeft says whether a store call ended because its request did: the
// client went away (its context was cancelled), not the store.
func clientLeft(err error) bool { return errors.Is(err, context.Canceled) }

// statusClientClosedRequest is nginx's and reverse_proxy's 499.
const statusClientClosedRequest = 499

// storeUnavailable answers 503 and logs the outage, at most once a second
// per handler so an outage does not flood the log; a call that ended
// because its client left is no outage (clientGone).
func (h *Handler) storeUnavailable(w http.ResponseWriter, err error) error {
	if clientLeft(err) {
		return h.clientGone(err)
	}
	if onceASecond(h.lastStoreLog) {
		h.logger.Error("key store unavailable", zap.String("store", h.app.storeName()), zap.Error(err))
	}
	w.Header().Set(headerRetryAfter, "1")
	return h.refuse(outcomeStoreError, problemStoreUnavailable)
}

// onceASecond says whether a second has passed since it last said so
// with last, for logs that every request of an outage or a
// misconfiguration would otherwise flood.
func onceASecond(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	return now-prev > int64(time.Second) && last.CompareAndSwap(prev, now)
}

// errSecondOnPath is what a keygate handler says of a request that an
// earlier keygate handler on its path admitted.
var errSecondOnPath = errors.New("a second keygate handler on this request's path: the first admitted it and removed its key, so this one would refuse it as keyless (or take it for anonymous); give each route one keygate, with its own roles and limits, not one for the site and another inside a route")

// secondOnPath refuses a request that an earlier keygate handler admitted
// and this one finds without its key: a config error, not the client's
// (500, logged at most once a second, and counted as misconfigured),
// rather than a 401 that sends its caller to check a good key, or an
// anonymous pass that hides the key from the upstream. Caddy logs an
// error that handle_errors renders only at DEBUG, hence the log here.
func (h *Handler) secondOnPath() error {
	if onceASecond(h.lastPathLog) {
		h.logger.Error("misconfigured", zap.Error(errSecondOnPath))
	}
	h.app.metrics.decision(outcomeMisconfigured).Inc()
	return caddyhttp.Error(http.StatusInternalServerError, errSecondOnPath)
}

// admittedEarlier says whether a keygate handler admitted this request by
// its key already: it put the {keygate.*} placeholders in its replacer,
// {keygate.anonymous} false. (One that admitted it as anonymous took away
// no key: this handler treats it as any keyless request, a 401 without
// anonymous, so that no client can bring about the 500.) Asked only of a
// request that came with identity headers and without a key, so a request
// that does not pays nothing.
func admittedEarlier(repl *caddy.Replacer) bool {
	anonymous, ok := repl.Get("keygate.anonymous")
	return ok && anonymous == false
}

func (h *Handler) refuseInvalid(w http.ResponseWriter) error {
	w.Header().Set("WWW-Authenticate", `Bearer realm="keygate", error="invalid_token"`)
	return h.refuse(outcomeInvalid, problemInvalidKey)
}

// roleRecheckEvery is how often a key refused for its roles is confirmed
// in the store (refuseLackingRole).
const roleRecheckEvery = time.Second

// refuseLackingRole refuses a key whose cached record lacks the route's
// roles. The store is asked first, without counting the request: the key
// may have been disabled, deleted or rotated away since this gateway cached
// it, and such a key gets 401 as it would anywhere, not a 403 saying that
// it is good for other routes. If the store cannot say, it is 403 all the
// same: a refusal either way. (Roles never change under one secret.)
func (h *Handler) refuseLackingRole(ctx context.Context, w http.ResponseWriter, entry *cachedKey, hash apikey.Hash) error {
	start := time.Now()
	if v := entry.validatedAt.Load(); v > h.app.shared.epochs.changedAt.Load() && start.UnixNano()-v >= 0 && start.UnixNano()-v < int64(roleRecheckEvery) {
		// the store said it was valid within the second, and no change
		// learned of since: a client looping on a route it may not use
		// costs the store one call a second, not one a request
		return h.refuseRole(w)
	}
	ident := entry.record.Load()
	verdict, err := h.checkKey(ctx, start, ident.key.ID, hash, ident.key.Revision, store.Policy{}, store.Ask{})
	if err == nil {
		if verdict.Fresh != nil {
			entry.record.Store(newIdentity(verdict.Fresh))
		}
		switch verdict.Status {
		case store.KeyValid:
			entry.validatedAt.Store(start.UnixNano())
		case store.KeyUnknown:
			h.app.shared.keys.markUnknown(hash, time.Now())
			return h.refuseInvalid(w)
		default:
			return h.refuseInvalid(w)
		}
	}
	return h.refuseRole(w)
}

func (h *Handler) refuseRole(w http.ResponseWriter) error {
	w.Header().Set("WWW-Authenticate", `Bearer realm="keygate", error="insufficient_scope"`)
	return h.refuse(outcomeForbidden, problemInsufficientRole)
}

func (h *Handler) refuse(o outcome, p *Problem) error {
	h.app.metrics.decision(o).Inc()
	return refuse(p)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
