// Package redisurl parses Redis URLs for keygate's two Redis stores (the
// gateway's and the backend's) without ever quoting one in an error: a
// Redis URL may hold a password, and a parse error reaches the logs (a
// failed config load, the backend's startup).
package redisurl

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// hint is what most URLs that do not parse lack: a password with one of
// these characters unescaped ends the password early, and what follows
// reads as a port, a path or options.
const hint = " (in a password, write % @ / # ? as %25 %40 %2F %23 %3F)"

// Parse is redis.ParseURL without quoting any part of the URL in its
// errors: url.Parse's quote the whole URL or a part, go-redis's the
// database number or an option, any of which may be a piece of a password
// that was not percent-encoded. Each says what did not parse, and how a
// password is written.
func Parse(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, unquoted(err)
	}
	return opts, nil
}

// MoreServers adds to err, the failure to open url as one server's, that
// the URL's addr options name more servers and which setting says what
// they are: cluster for a Redis Cluster's nodes, sentinel for Sentinels
// (each store names its own: a Caddyfile option, a flag). Any other err,
// and nil, it returns as it is.
func MoreServers(url string, err error, cluster, sentinel string) error {
	if err == nil || !strings.Contains(url, "addr=") {
		return err
	}
	return fmt.Errorf("%w; addr options name more servers: add %s for a Redis Cluster's nodes, %s for Sentinels", err, cluster, sentinel)
}

// ParseCluster is redis.ParseClusterURL (a seed node, more as addr
// options: redis://node1:6379?addr=node2:6379) with Parse's errors.
func ParseCluster(raw string) (*redis.ClusterOptions, error) {
	opts, err := redis.ParseClusterURL(raw)
	if err != nil {
		return nil, unquoted(err)
	}
	return opts, nil
}

// ParseFailover is redis.ParseFailoverURL (a Sentinel, more as addr
// options; the userinfo is the Sentinels' credentials, the primary's go in
// username and password options) with Parse's errors.
func ParseFailover(raw string) (*redis.FailoverOptions, error) {
	opts, err := redis.ParseFailoverURL(raw)
	if err != nil {
		return nil, unquoted(err)
	}
	return opts, nil
}

// unquoted is a parse error's kind and the hint, without what it quotes.
func unquoted(err error) error {
	var escape url.EscapeError
	var quoting *url.Error
	switch {
	case errors.As(err, &escape):
		return errors.New("invalid percent-escape" + hint)
	case errors.As(err, &quoting):
		return errors.New(what(quoting.Err.Error()) + hint)
	default:
		return errors.New(what(err.Error()) + hint)
	}
}

// what is the kind of a parse error, without the part of the URL it
// quotes: its message up to the first ':' or '"', e.g. "invalid port" from
// `invalid port ":s3cret" after host`, "invalid database number" from
// `redis: invalid database number: "x"`.
func what(msg string) string {
	msg = strings.TrimPrefix(strings.TrimPrefix(msg, "redis: "), "net/url: ")
	if i := strings.IndexAny(msg, `:"`); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimSpace(msg)
}
