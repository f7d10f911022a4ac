package redistest

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// A port found free can be taken by another test binary's redis-server
// before this one binds it. The server answering there is then not ours:
// launch says so, with redis-server's own words, so start tries other ports.
func TestLaunchOnAPortAnotherServerHoldsFails(t *testing.T) {
	other := Start(t)
	s := &Server{tb: t, dir: t.TempDir(), port: other.port, Addr: other.Addr}
	err := s.launch()
	if !errors.Is(err, errExited) || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("launch on %s, held by another server: %v, want %v with redis-server's reason", s.Addr, err, errExited)
	}
}

// A cluster node's bus listens on a port freeport found, not on Redis's
// default (the data port + 10000, unchecked and possibly in the ephemeral
// range, where a CI run once lost it).
func TestClusterNodesBusOnPortsFoundFree(t *testing.T) {
	c := StartCluster(t, 3)
	for _, s := range c.Nodes {
		got, err := s.Client(t).ConfigGet(context.Background(), "cluster-port").Result()
		if err != nil {
			t.Fatal(err)
		}
		if s.busPort == 0 || s.busPort == s.port+10000 || got["cluster-port"] != strconv.Itoa(s.busPort) {
			t.Errorf("node %s: bus port %q, found free %d", s.Addr, got["cluster-port"], s.busPort)
		}
	}
}
