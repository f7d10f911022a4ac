package keygate

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/internal/problem"
)

func init() {
	caddy.RegisterModule(ErrorRenderer{})
}

// ErrorRenderer writes the error being handled as an RFC 9457 problem+json
// body with an "error" member. Use it in handle_errors: keygate's refusals
// get their full body (Shlink's shape for key errors, Short Link's message
// for 429); any other error gets a generic body with its status.
type ErrorRenderer struct{}

// CaddyModule returns the Caddy module information.
func (ErrorRenderer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.keygate_errors",
		New: func() caddy.Module { return new(ErrorRenderer) },
	}
}

// ServeHTTP renders the error in the request's context; outside error
// handling it passes the request on.
func (ErrorRenderer) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	err, _ := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	if err == nil {
		return next.ServeHTTP(w, r)
	}
	var p *Problem
	if errors.As(err, &p) {
		problem.Write(w, p.Details)
		return nil
	}
	status := http.StatusInternalServerError
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 400 {
		status = he.StatusCode
	}
	text := http.StatusText(status)
	problem.Write(w, problem.Details{Type: "about:blank", Title: text, Status: status, Error: text})
	return nil
}

var _ caddyhttp.MiddlewareHandler = ErrorRenderer{}
