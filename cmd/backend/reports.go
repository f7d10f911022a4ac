package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
)

// reports is the `backend reports` command: it prints the newest abuse
// reports (POST /api/v1/secrets/<id>/report), oldest first, one JSON
// object a line, for the human who reviews them. It opens the store the
// backend would (-data, -redis, -redis-cluster, -redis-sentinel and their
// environment variables); the embedded one only while no backend has it
// open.
func reports(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c config
	fs := flag.NewFlagSet("backend reports", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dataDir, "data", envOr(getenv, "BACKEND_DATA_DIR", "./data"), "data `directory` of the embedded store (env BACKEND_DATA_DIR)")
	if err := redisFlags(fs, &c.redis, getenv, "reads the embedded store <data>/backend.db"); err != nil {
		return fmt.Errorf("reports: %w", err)
	}
	n := fs.Int("n", 100, "how many of the newest reports to print")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("reports: unexpected arguments: %q", fs.Args())
	}
	if *n < 1 {
		return fmt.Errorf("reports: -n must be at least 1, not %d", *n)
	}
	if c.redis.url == "" {
		// opening would create an empty database where none is
		if _, err := os.Stat(c.embeddedStorePath()); err != nil {
			return fmt.Errorf("reports: no embedded store in %s (-data, or -redis for a Redis store): %w", c.dataDir, err)
		}
	}
	st, err := openStore(ctx, c)
	if err != nil {
		return fmt.Errorf("reports: %w", err)
	}
	defer st.Close()
	list, err := st.Reports(ctx, *n)
	if err != nil {
		return fmt.Errorf("reports: %w", err)
	}
	enc := json.NewEncoder(stdout)
	for _, r := range list {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}
