package backend

import (
	"crypto/rand"
)

const alphanumeric = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomID returns n characters drawn uniformly from [A-Za-z0-9] with
// crypto/rand. Bytes >= 248 are rejected so that the modulo is unbiased.
func randomID(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/4+4)
	for len(out) < n {
		_, _ = rand.Read(buf) // never fails (crypto/rand panics on a broken system RNG)
		for _, b := range buf {
			if b >= 248 {
				continue
			}
			out = append(out, alphanumeric[int(b)%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out)
}

// isSecretID reports whether id has a linkId's form: SecretIDLen of
// [A-Za-z0-9] (the ids of earlier versions too; see newSecretID).
func isSecretID(id string) bool {
	return len(id) == SecretIDLen && isAlphanumeric(id)
}

// newSecretID draws a linkId: SecretIDLen of [A-Za-z0-9] with a capital, a
// small letter and a digit in it, as SecLink's are (A1b2C3d4E5f6). Slugs
// of that shape are reserved for shareUrls (isMintedSecretID), and words
// of twelve letters (presentation) stay free for short links. About one
// draw in eight lacks a class and is drawn again.
func newSecretID() string {
	for {
		if id := randomID(SecretIDLen); isMintedSecretID(id) {
			return id
		}
	}
}

// isMintedSecretID reports whether id has the shape of the ids
// newSecretID draws.
func isMintedSecretID(id string) bool {
	if !isSecretID(id) {
		return false
	}
	var capital, small, digit bool
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case c >= 'A' && c <= 'Z':
			capital = true
		case c >= 'a' && c <= 'z':
			small = true
		default:
			digit = true
		}
	}
	return capital && small && digit
}

// isAlphanumeric reports whether s is non-empty and only [A-Za-z0-9].
func isAlphanumeric(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
