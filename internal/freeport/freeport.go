// Package freeport finds free loopback ports for tests and the load
// benchmark, which start servers (redis-server, Caddy, the backend) on
// their own.
package freeport

import (
	"errors"
	"net"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	given = make(map[int]bool) // every port Find returned in this process
)

// Find returns a TCP port on 127.0.0.1 that was free a moment ago and that
// this process was not given before: the kernel may hand the same free port
// to listeners opened and closed one after another, and callers start
// several servers on ports found together (a gateway's site and admin, a
// backend).
func Find() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !given[port] {
			given[port] = true
			return port, nil
		}
	}
	return 0, errors.New("freeport: the kernel keeps offering ports given already")
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
