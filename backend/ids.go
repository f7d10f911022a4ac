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
// small letter and a digit in it, as SecLink's are (A1b2C3d4E5f6). About
// one draw in eight lacks a class and is drawn again.
func newSecretID() string {
	for {
		if id := randomID(SecretIDLen); hasClasses(id, true, true, true) {
			return id
		}
	}
}

// isShareURLSlug reports whether slug is of the shape reserved for
// SecLink's shareUrls, <base>/<linkId>: a linkId's, with a capital and a
// small letter. Every linkId drawn has both, and so had all but one in
// 300 that earlier versions drew (those lacking only a digit, one in
// eight, included); slugs in one case (presentation, summersale24), the
// usual ones, stay free for short links.
func isShareURLSlug(slug string) bool {
	return isSecretID(slug) && hasClasses(slug, true, true, false)
}

// hasClasses reports whether s has a capital, a small letter and a digit,
// each where asked.
func hasClasses(s string, needCapital, needSmall, needDigit bool) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'A' && c <= 'Z':
			needCapital = false
		case c >= 'a' && c <= 'z':
			needSmall = false
		case c >= '0' && c <= '9':
			needDigit = false
		}
	}
	return !needCapital && !needSmall && !needDigit
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
