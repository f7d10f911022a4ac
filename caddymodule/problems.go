package keygate

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/problem"
)

// Problem is a refusal by the gateway. The handler returns it wrapped in a
// caddyhttp.Error, and the keygate_errors handler (in handle_errors) renders
// it as problem+json; without that, Caddy answers with the bare status and
// the headers the handler already set.
type Problem struct {
	problem.Details
}

// Error implements error.
func (p *Problem) Error() string { return p.Details.Error }

// shlinkInvalidKeyType is the type Shlink gives every key refusal; its
// clients recognise it.
const shlinkInvalidKeyType = "https://shlink.io/api/error/invalid-api-key"

// invalidKey builds a 401 in Shlink's shape with the given short message.
func invalidKey(detail, msg string) *Problem {
	return &Problem{problem.Details{
		Type:   shlinkInvalidKeyType,
		Title:  "Invalid API key",
		Status: http.StatusUnauthorized,
		Detail: detail,
		Error:  msg,
	}}
}

// The fixed refusals. Their texts are the contract with existing clients
// (see shared/reference): change them only with the README's catalogue.
var (
	// A missing key is an invalid one, to every replaced product: Shlink
	// answers it so, detail and all, and Short Link's "Invalid API key" is
	// for an X-API-Key header that "is invalid or doesn't exist". Its
	// WWW-Authenticate, without an error code (RFC 6750, 3.1), tells it
	// apart.
	problemMissingKey = invalidKey(
		"Provided API key does not exist or is invalid",
		"Invalid API key")
	problemMalformedKey = invalidKey(
		"Provided API key does not exist or is invalid",
		"Invalid API key format")
	problemInvalidKey = invalidKey(
		"Provided API key does not exist or is invalid",
		"Invalid API key")
	problemConflictingKeys = &Problem{problem.New(http.StatusBadRequest, "conflicting-api-keys",
		"Conflicting API keys",
		"Authorization: Bearer and X-API-Key carry different keys; send one").
		WithError("Conflicting API keys in Authorization and X-API-Key")}
	problemInsufficientRole = &Problem{problem.New(http.StatusForbidden, "insufficient-role",
		"Insufficient role",
		"The API key does not hold a role this route requires").
		WithError("API key lacks the required role")}
	problemStoreUnavailable = &Problem{problem.New(http.StatusServiceUnavailable, "store-unavailable",
		"Service Unavailable",
		"The key store is unreachable; try again shortly").
		WithError("Key store unavailable")}
)

// defaultRateLimitedMessage is the error message of a 429: the one Short
// Link's clients expect (a route's rate_limit_message may say another).
const defaultRateLimitedMessage = "Too much request. Try again later."

// problemRateLimited is the 429 for one decision, with msg as its error
// message.
func problemRateLimited(p store.Policy, retry time.Duration, msg string) *Problem {
	return &Problem{problem.New(http.StatusTooManyRequests, "rate-limited",
		"Too Many Requests",
		fmt.Sprintf("Rate limit of %d requests per %s exceeded; retry in %d s", p.Limit, formatWindow(p.Window), max(1, ceilSeconds(retry)))).
		WithError(msg)}
}

// refuse wraps a problem as the handler's error.
func refuse(p *Problem) error { return caddyhttp.Error(p.Status, p) }
