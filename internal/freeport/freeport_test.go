package freeport

import "testing"

// The kernel may hand the same free port to listeners opened and closed
// one after another, and tests start several servers on ports found
// together: a port is never given twice in one process.
func TestFindNeverGivesAPortTwice(t *testing.T) {
	seen := make(map[int]bool)
	for i := range 2000 {
		port, err := Find()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d given twice (call %d)", port, i+1)
		}
		seen[port] = true
	}
}

// Ports come from below the kernel's ephemeral range, where no outgoing
// connection takes one between Find and the server's bind.
func TestFindStaysBelowTheEphemeralRange(t *testing.T) {
	top := ephemeralStart()
	if top-lowest < 1000 {
		t.Skipf("the ephemeral range starts at %d: no room below it", top)
	}
	for range 200 {
		port, err := Find()
		if err != nil {
			t.Fatal(err)
		}
		if port < lowest || port >= top {
			t.Fatalf("port %d, want one in [%d, %d)", port, lowest, top)
		}
	}
}
