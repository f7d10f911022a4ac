package backend

import "testing"

// Every linkId drawn has a capital, a small letter and a digit, as
// SecLink's do; slugs with a capital and a small letter in twelve letters
// and digits are reserved for shareUrls, and only they.
func TestSecretIDsAndTheSlugsTheyReserve(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newSecretID()
		if !hasClasses(id, true, true, true) || !isShareURLSlug(id) || seen[id] {
			t.Fatalf("drew %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
	for slug, want := range map[string]bool{
		"A1b2C3d4E5f6": true, "HappyNewYear": true, "presentation": false, "PRESENTATION": false,
		"summersale24": false, "ABC123DEF456": false, "A1b2C3d4E5f": false, "A1b2C3d4E5f-": false,
	} {
		if got := isShareURLSlug(slug); got != want {
			t.Errorf("isShareURLSlug(%q) = %v, want %v", slug, got, want)
		}
	}
}
