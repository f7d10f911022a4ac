// Package keygate is a Caddy module that puts API keys in front of any HTTP
// app: it validates keys (stored only as SHA-256 hashes), rate limits per
// key or per client IP with sliding windows, strips spoofed identity headers
// and injects the real ones. Keys are managed through Caddy's admin API and
// the `keygate api-key` command.
//
// The path of a request through the gateway, file by file:
//
//	handler.go      Handler.ServeHTTP: the whole decision, top to bottom
//	credentials.go  where the key comes from (Authorization or X-API-Key)
//	cache.go        key hash -> record, so a request costs one store call
//	identity.go     strip client X-Keygate-* headers, inject the real ones
//	lease.go        the lease option: admit requests counted ahead in the store
//	epoch.go        how leased keys learn of key changes within a second
//	ratelimit.go    X-RateLimit-* and RateLimit/RateLimit-Policy headers
//	problems.go     every refusal, returned as a caddyhttp.Error
//	errors.go       the keygate_errors handler that renders them as problem+json
//
// Around it: app.go (the "keygate" app that owns the shared store),
// caddyfile.go, admin.go (/keygate/ on the admin API), command.go (the CLI)
// and metrics.go. Storage lives in the store package and its redisstore and
// localstore implementations.
package keygate
