// Package redisurl parses Redis URLs for keygate's two Redis stores (the
// gateway's and the backend's) without ever quoting one in an error: a
// Redis URL may hold a password, and a parse error reaches the logs (a
// failed config load, the backend's startup).
package redisurl

import (
	"errors"
	"net/url"

	"github.com/redis/go-redis/v9"
)

// Parse is redis.ParseURL, whose errors from url.Parse quote the whole URL,
// password included: those are reported without it. An invalid
// percent-escape, which quotes three characters of (most likely) the
// password, is reported with a hint instead.
func Parse(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err == nil {
		return opts, nil
	}
	var quoting *url.Error
	if !errors.As(err, &quoting) {
		return nil, err // go-redis's own errors name a part: scheme, path, option
	}
	var escape url.EscapeError
	if errors.As(quoting.Err, &escape) {
		return nil, errors.New("invalid percent-escape (in a password, write % as %25, and @ / # ? as %40 %2F %23 %3F)")
	}
	return nil, quoting.Err
}
