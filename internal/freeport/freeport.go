// Package freeport finds free loopback ports for tests and the load
// benchmark, which start servers (redis-server, Caddy, the backend) on
// their own.
package freeport

import (
	"net"
	"testing"
)

// Find returns a TCP port on 127.0.0.1 that was free a moment ago.
func Find() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Get is Find for tests: it fails tb when no port can be had.
func Get(tb testing.TB) int {
	tb.Helper()
	port, err := Find()
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	return port
}
