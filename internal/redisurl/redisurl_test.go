package redisurl

import (
	"errors"
	"strings"
	"testing"
)

// A URL that does not parse is reported without its password, whatever
// the reason; one that parses keeps it.
func TestParseNeverQuotesThePassword(t *testing.T) {
	refusedUnquoted(t, func(raw string) error { _, err := Parse(raw); return err }, []string{
		"redis://:s3cr%zzet@localhost:6379/0",     // a bare % in the password
		"redis://user:s3cr%et@localhost:6379/0",   // the same, with a user name
		"redis://:s3cret@local host:6379/0",       // a space in the host
		"redis://:s3cret@[::1:6379/0",             // an unclosed IPv6 host
		"redis://:s3cret@localhost:63x9/0",        // a port that is not a number
		"redis://:s3cret@localhost:6379/0\x7f",    // a control character
		"redis://:s3cret@localhost:6379/0?x=1#s3", // an unknown option
		"http://:s3cret@localhost:6379/0",         // another scheme
		"redis://:s3cret/x@localhost",             // a '/' in the password: the rest a port
		"redis://:12/s3cret@localhost",            // the same: the rest a database number
		"redis://localhost/0?s3cret=x",            // an option that is not one
		"redis://localhost/0?dial_timeout=s3cret", // an option's value
	})
	opts, err := Parse("redis://user:s3cr%25et@localhost:6379/2")
	if err != nil || opts.Password != "s3cr%et" || opts.Username != "user" || opts.DB != 2 || opts.Addr != "localhost:6379" {
		t.Fatalf("a valid URL: %+v, %v", opts, err)
	}
}

// A cluster URL that does not parse is reported as a server's is; one
// that parses lists every node.
func TestParseClusterNeverQuotesThePassword(t *testing.T) {
	refusedUnquoted(t, func(raw string) error { _, err := ParseCluster(raw); return err }, []string{
		"redis://:s3cr%zzet@localhost:6379",             // a bare % in the password
		"redis://:s3cret@localhost:63x9",                // a port that is not a number
		"redis://:s3cret@localhost:6379?addr=s3cret",    // an addr without a port
		"redis://:s3cret@localhost:6379?s3cret=x",       // an option that is not one
		"unix://:s3cret@localhost:6379",                 // no cluster over a socket
		"redis://localhost:6379?dial_timeout=s3cret&x=", // an option's value
	})
	opts, err := ParseCluster("redis://:s3cr%25et@node1:7000?addr=node2:7001&addr=node3:7002")
	if err != nil || opts.Password != "s3cr%et" || strings.Join(opts.Addrs, ",") != "node1:7000,node2:7001,node3:7002" {
		t.Fatalf("a valid URL: %+v, %v", opts, err)
	}
}

// So is a Sentinel URL; one that parses keeps the Sentinels' credentials
// apart from the primary's.
func TestParseFailoverNeverQuotesThePassword(t *testing.T) {
	refusedUnquoted(t, func(raw string) error { _, err := ParseFailover(raw); return err }, []string{
		"redis://:s3cr%zzet@localhost:26379",          // a bare % in the password
		"redis://localhost:26379?addr=s3cret",         // an addr without a port
		"redis://localhost:26379/s3cret",              // a database that is not a number
		"redis://localhost:26379?dial_timeout=s3cret", // an option's value
	})
	opts, err := ParseFailover("redis://:sentinel-pw@s1:26379?addr=s2:26379&password=primary-pw")
	if err != nil || opts.SentinelPassword != "sentinel-pw" || opts.Password != "primary-pw" || strings.Join(opts.SentinelAddrs, ",") != "s1:26379,s2:26379" {
		t.Fatalf("a valid URL: %+v, %v", opts, err)
	}
}

// refusedUnquoted checks that parse refuses each URL with an error that
// does not quote its password (every one holds "s3cr").
func refusedUnquoted(t *testing.T, parse func(string) error, urls []string) {
	t.Helper()
	for _, raw := range urls {
		err := parse(raw)
		if err == nil {
			t.Errorf("%q parsed", raw)
			continue
		}
		if strings.Contains(err.Error(), "s3cr") {
			t.Errorf("the error for %q quotes the password: %v", raw, err)
		}
	}
}

// A URL with addr options that one server's client refused gets the hint
// naming the caller's settings; any other error, and none, stay as they are.
func TestMoreServers(t *testing.T) {
	refused := errors.New("refused")
	err := MoreServers("redis://a:1?addr=b:2", refused, "redis_cluster", "redis_sentinel <master name>")
	want := "refused; addr options name more servers: add redis_cluster for a Redis Cluster's nodes, redis_sentinel <master name> for Sentinels"
	if !errors.Is(err, refused) || err.Error() != want {
		t.Errorf("with addr options: %v, want %q wrapping the error", err, want)
	}
	if err := MoreServers("redis://a:1/0", refused, "c", "s"); err != refused {
		t.Errorf("without addr options: %v, want the error as it is", err)
	}
	if err := MoreServers("redis://a:1?addr=b:2", nil, "c", "s"); err != nil {
		t.Errorf("no error: %v, want nil", err)
	}
}
