package keygate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/keygate/keygate/internal/benchheaders"
	"github.com/keygate/keygate/internal/benchupstream"
	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/redistest"
)

// BenchmarkThroughCaddy is a request through a whole Caddy, in process:
// a client like wrk, the server, handlers, reverse_proxy and an upstream,
// on loopback, with plain reverse_proxy beside keygate's configurations.
// Its allocs/op and B/op do not move with a busy machine as the load
// benchmark's throughput does: what keygate allocates beyond plain Caddy is
// what it costs the exchange (its handler, and what the proxy and the
// upstream do with the headers it adds), measured exactly. Beside them,
// plain Caddy configured to send the same headers (header, header_up):
// keygate's work apart from what its headers cost.
// Run with -run '^$' (the package's tests load their own configs into the
// one Caddy).
func BenchmarkThroughCaddy(b *testing.B) {
	srv := redistest.Start(b)
	upstream := benchUpstream(b)
	// Each configuration is a site of its own, on a port of its own: in one
	// site, every handle block Caddy tries before the one that matches
	// costs allocations of its own, and the figures would depend on the
	// order of the blocks.
	sites := []struct{ name, body string }{
		{"plain", "\treverse_proxy {upstream}\n"},
		// plain Caddy sending what keygate sends (the load benchmark's
		// -same-headers): the rate-limit headers, and upstream the key's
		// id and name in place of the key
		{"plain-same-headers", benchheaders.Response("\t", false, "") + "\treverse_proxy {upstream} {\n" + benchheaders.Upstream("\t\t", false) + "\t}\n"},
		{"sliding_window", keygateSite("rate_limit " + benchheaders.Limit)},
		{"sliding_window-x-ratelimit", keygateSite("rate_limit " + benchheaders.Limit + "\n\t\trate_limit_headers x-ratelimit")},
		{"sliding_log", keygateSite("rate_limit " + benchheaders.Limit + "\n\t\talgorithm sliding_log")},
		{"anonymous", keygateSite("anonymous " + benchheaders.Limit)},
	}
	cfg := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\tlevel WARN\n\t}\n\tkeygate {\n\t\tredis %s\n\t}\n}\n", srv.URL())
	addrs := map[string]string{}
	for _, site := range sites {
		addrs[site.name] = "127.0.0.1:" + strconv.Itoa(freeport.Get(b))
		cfg += fmt.Sprintf("http://%s {\n%s\thandle_errors {\n\t\tkeygate_errors\n\t}\n}\n",
			addrs[site.name], strings.ReplaceAll(site.body, "{upstream}", upstream))
	}
	loadCaddyfile(b, cfg)
	app, err := caddy.ActiveContext().App("keygate")
	if err != nil {
		b.Fatal(err)
	}
	key := benchKeys(b, app.(*App), 1)[0]

	for _, run := range []struct{ name, site, key string }{
		{"plain", "plain", ""},
		{"plain/with-key", "plain", key}, // the same request bytes as keygate's
		{"plain/same-headers", "plain-same-headers", key},
		{"keygate/sliding_window", "sliding_window", key},
		{"keygate/sliding_window/x-ratelimit", "sliding_window-x-ratelimit", key},
		{"keygate/sliding_log", "sliding_log", key},
		{"keygate/anonymous", "anonymous", ""},
	} {
		b.Run(run.name, func(b *testing.B) {
			benchThrough(b, addrs[run.site], "/x", run.key)
		})
	}
}

// keygateSite is the body of a site with keygate (options, a limit no run
// reaches, and lease 64, as the load benchmark's -lease 64) before
// reverse_proxy.
func keygateSite(options string) string {
	return "\tkeygate {\n\t\t" + options + "\n\t\tlease 64\n\t}\n\treverse_proxy {upstream}\n"
}

// loadCaddyfile runs cfg in this process's Caddy until the benchmark ends.
func loadCaddyfile(b *testing.B, cfg string) {
	b.Helper()
	js, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		b.Fatal(err)
	}
	if len(warnings) > 0 {
		b.Fatalf("Caddyfile warnings: %v", warnings)
	}
	if err := caddy.Load(js, true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = caddy.Stop() })
}

// benchUpstream is the load benchmark's upstream, until the benchmark ends.
func benchUpstream(b *testing.B) string {
	b.Helper()
	addr, stop, err := benchupstream.Start()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	return addr
}

// benchThrough sends b.N GETs of path to addr, as wrk does: from 4
// connections per CPU kept alive, each request written from bytes built
// once and each response read with no allocation of the client's, so that
// allocs/op and B/op are the proxy's and the upstream's. Warm requests go
// unmeasured first (pooled upstream connections, the key cache and a
// lease). Any status but 200 fails it.
func benchThrough(b *testing.B, addr, path, key string) {
	request := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if key != "" {
		request += "Authorization: Bearer " + key + "\r\n"
	}
	request += "\r\n"
	warm, err := dialExchanger(addr, request)
	if err != nil {
		b.Fatal(err)
	}
	for range 200 {
		if err := warm.exchange(); err != nil {
			b.Fatal(err)
		}
	}
	warm.conn.Close()
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		x, err := dialExchanger(addr, request)
		if err != nil {
			b.Error(err)
			return
		}
		defer x.conn.Close()
		for pb.Next() {
			if err := x.exchange(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// exchanger is one kept-alive client connection sending one request over
// and over.
type exchanger struct {
	conn    net.Conn
	request []byte
	r       *bufio.Reader
	body    []byte
}

func dialExchanger(addr, request string) (*exchanger, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &exchanger{conn: conn, request: []byte(request), r: bufio.NewReaderSize(conn, 4096), body: make([]byte, 4096)}, nil
}

// exchange writes the request and reads its response: a 200 with a
// Content-Length (which Caddy passes on from the upstream).
func (x *exchanger) exchange() error {
	if err := x.conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := x.conn.Write(x.request); err != nil {
		return err
	}
	status, err := x.r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("response %q", bytes.TrimSpace(status))
	}
	length := -1
	for {
		line, err := x.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 { // the blank line ending the header
			break
		}
		if name, value, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(name, []byte("Content-Length")) {
			n, err := strconv.Atoi(string(bytes.TrimSpace(value)))
			if err != nil || n > len(x.body) {
				return fmt.Errorf("Content-Length %q", bytes.TrimSpace(value))
			}
			length = n
		}
	}
	if length < 0 {
		return errors.New("response without Content-Length")
	}
	_, err = io.ReadFull(x.r, x.body[:length])
	return err
}
