// Package benchupstream is the upstream of keygate's benchmarks: the load
// benchmark (bench/) and the in-process BenchmarkThroughCaddy answer through
// the same one, so their figures describe the same exchange.
package benchupstream

import (
	"net"
	"net/http"
	"time"
)

var body = []byte("ok\n")

// Start serves a short text body on a loopback port, as fast as Go's server
// does, until stop is called.
func Start() (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// canonical keys set directly: no per-request canonicalizing
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Header()["Content-Length"] = []string{"3"}
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(l) }()
	return l.Addr().String(), func() { _ = srv.Close() }, nil
}
