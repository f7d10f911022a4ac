package keygate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/keygate/keygate/internal/benchupstream"
	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/redistest"
)

// BenchmarkThroughCaddy is a request through a whole Caddy, in process:
// a client like wrk, the server, handlers, reverse_proxy and an upstream,
// on loopback, with plain reverse_proxy beside keygate's routes in the same
// server. Its allocs/op and B/op do not move with a busy machine as the
// load benchmark's throughput does: what a keygate route allocates beyond
// the plain one is what keygate costs the exchange (its handler, and what
// the proxy and the upstream do with the headers it adds), measured
// exactly. Run with -run '^$' (the package's tests load their own configs
// into the one Caddy).
func BenchmarkThroughCaddy(b *testing.B) {
	srv := redistest.Start(b)
	upstream := benchUpstream(b)
	port := freeport.Get(b)
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log {
		level WARN
	}
	keygate {
		redis %s
	}
}
http://127.0.0.1:%d {
	handle /plain/* {
		reverse_proxy %s
	}
	handle /key/sliding_window/* {
		keygate {
			rate_limit 1000000000 1m
			lease 64
		}
		reverse_proxy %[3]s
	}
	handle /key/sliding_log/* {
		keygate {
			rate_limit 1000000000 1m
			algorithm sliding_log
			lease 64
		}
		reverse_proxy %[3]s
	}
	handle /anon/* {
		keygate {
			anonymous 1000000000 1m
			lease 64
		}
		reverse_proxy %[3]s
	}
	handle_errors {
		keygate_errors
	}
}
`, srv.URL(), port, upstream)
	loadCaddyfile(b, cfg)
	app, err := caddy.ActiveContext().App("keygate")
	if err != nil {
		b.Fatal(err)
	}
	key := benchKeys(b, app.(*App), 1)[0]

	addr := "127.0.0.1:" + strconv.Itoa(port)
	for _, route := range []struct{ name, path, key string }{
		{"plain", "/plain/x", ""},
		{"plain/with-key", "/plain/x", key}, // the same request bytes as keygate's
		{"keygate/sliding_window", "/key/sliding_window/x", key},
		{"keygate/sliding_log", "/key/sliding_log/x", key},
		{"keygate/anonymous", "/anon/x", ""},
	} {
		b.Run(route.name, func(b *testing.B) {
			benchThrough(b, addr, route.path, route.key)
		})
	}
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

// benchThrough sends b.N GETs to url, as wrk does: from 8 connections kept
// alive (4 per CPU), each request written from bytes built once and each
// response read with no allocation of the client's, so that allocs/op and
// B/op are the proxy's and the upstream's. Warm requests go unmeasured
// first (pooled upstream connections, the key cache and a lease). Any
// status but 200 fails it.
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
