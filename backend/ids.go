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
// [A-Za-z0-9].
func isSecretID(id string) bool {
	return len(id) == SecretIDLen && isAlphanumeric(id)
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
