// Package e2e tests the whole keygate stack end to end: the built keygate
// (Caddy + the keygate module) and backend binaries, started with the root
// Caddyfile unchanged and configured only by environment variables, on a
// real Redis or on the embedded stores. Clients are the real ones the
// reference docs show: curl and Python's requests running the documented
// examples (only the host, the key and the file changed), and ShareX's
// custom-uploader rules applied to the .sxcu file the backend serves.
//
// The package holds no code besides its tests.
package e2e
