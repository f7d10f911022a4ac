// Package freeport finds free loopback ports for tests that start servers
// (redis-server, Caddy, the backend) on their own.
package freeport

import (
	"net"
	"testing"
)

// Get returns a TCP port on 127.0.0.1 that was free a moment ago.
func Get(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
