// Package apikey defines keygate's key format: how secrets are generated,
// recognised and hashed. It knows nothing about storage or HTTP.
//
// A key is "sk_" followed by 48 lowercase hex characters: 24 bytes from
// crypto/rand, 192 bits of entropy (the Shorturlx format). Only the SHA-256
// of a key is ever stored; the plaintext exists only in the response that
// creates it. A plain (unsalted) SHA-256 is right here, unlike for passwords:
// the input is 192 random bits, so there is nothing to brute-force, and the
// hot path needs a lookup by hash, which a salt would prevent.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
)

const (
	// Prefix starts every key.
	Prefix = "sk_"
	// secretBytes is the number of random bytes in a key.
	secretBytes = 24
	// Length is the length of a well-formed key in characters.
	Length = len(Prefix) + 2*secretBytes
	// displayLen is how much of a key its display prefix shows.
	displayLen = len(Prefix) + 8
)

// Hash is the SHA-256 of a key, the only form in which keys are stored.
type Hash [sha256.Size]byte

// String returns the hash as lowercase hex. It is encoded on the stack and
// converted once: the hot path sends it to the store with every call.
func (h Hash) String() string {
	var buf [2 * sha256.Size]byte
	hex.Encode(buf[:], h[:])
	return string(buf[:])
}

// Generated is a freshly made key. Secret must be shown to the caller once
// and then forgotten.
type Generated struct {
	Secret  string
	Hash    Hash
	Display string // e.g. "sk_a1b2c3d4…", safe to show and store
}

// Generate makes a new random key.
func Generate() (Generated, error) {
	var raw [secretBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return Generated{}, err
	}
	secret := Prefix + hex.EncodeToString(raw[:])
	return Generated{Secret: secret, Hash: Sum(secret), Display: DisplayPrefix(secret)}, nil
}

// WellFormed reports whether s has the shape of a key: the prefix and 48
// lowercase hex characters. It runs before any lookup, so garbage never
// reaches the store.
func WellFormed(s string) bool {
	if len(s) != Length || s[:len(Prefix)] != Prefix {
		return false
	}
	for i := len(Prefix); i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Sum hashes a key. One of a well-formed key's length is hashed from a
// copy on the stack: []byte(secret) of more than 32 bytes would be an
// allocation on every request.
func Sum(secret string) Hash {
	var buf [Length]byte
	if len(secret) == Length {
		return sha256.Sum256(buf[:copy(buf[:], secret)])
	}
	return sha256.Sum256([]byte(secret))
}

// DisplayPrefix is the part of a key that may be shown in listings: enough
// for a person to recognise it, far too little to guess the rest.
func DisplayPrefix(secret string) string {
	if len(secret) < displayLen {
		return secret
	}
	return secret[:displayLen] + "…"
}
