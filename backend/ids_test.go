package backend

import "testing"

// Every linkId drawn has a capital, a small letter and a digit, as
// SecLink's do: slugs of that shape are reserved, and only they.
func TestSecretIDsHaveEveryClass(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newSecretID()
		if !isMintedSecretID(id) || seen[id] {
			t.Fatalf("drew %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
	for id, want := range map[string]bool{
		"A1b2C3d4E5f6": true, "presentation": false, "PRESENTATION": false, "abc123def456": false,
		"ABC123DEF456": false, "Presentation": false, "A1b2C3d4E5f": false, "A1b2C3d4E5f-": false,
	} {
		if got := isMintedSecretID(id); got != want {
			t.Errorf("isMintedSecretID(%q) = %v, want %v", id, got, want)
		}
	}
}
