// Package freeport finds free loopback ports for tests and the load
// benchmark, which start servers (redis-server, Caddy, the backend) on
// their own.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	given = make(map[int]bool) // every port Find returned in this process
)

// lowest is the lowest port Find returns.
const lowest = 10000

// Find returns a TCP port that was free a moment ago and that this process
// was not given before: callers start several servers on ports found
// together (a gateway's site and admin, a backend).
//
// The port is below the kernel's ephemeral range (ip_local_port_range),
// from which it picks the local port of every outgoing connection: a port
// found free there may be taken by any process's next connection before
// the server it was found for binds it (scripts/run's test found its ports
// and then built both binaries, and a connection made by a test running
// beside it took one). Where that range leaves no room below it, the
// kernel picks.
func Find() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if top := ephemeralStart(); top-lowest >= 1000 {
		for range 1000 {
			port := lowest + rand.IntN(top-lowest)
			if given[port] {
				continue
			}
			// all addresses, as the servers listen (Caddy's ":port")
			l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
			if err != nil {
				continue // in use
			}
			_ = l.Close()
			given[port] = true
			return port, nil
		}
		return 0, errors.New("freeport: no free port found below the ephemeral range")
	}
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

// ephemeralStart is the first port of the kernel's ephemeral range (0 when
// it cannot be read), read once.
var ephemeralStart = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(fields[0])
	return n
})

// Get is Find for tests: it fails tb when no port can be had.
func Get(tb testing.TB) int {
	tb.Helper()
	port, err := Find()
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	return port
}
