// Package redisstats reads Redis's per-command statistics (INFO
// commandstats), which the load benchmark and the store's Go benchmarks use
// to count keygate's scripts and the time Redis spends running them.
package redisstats

import (
	"strconv"
	"strings"
)

// Command is one command's statistics: how many times Redis ran it and the
// microseconds it spent doing so, since start or CONFIG RESETSTAT.
type Command struct {
	Calls, Usec int64
}

// Parse reads the reply of INFO commandstats, whose lines look like
// "cmdstat_evalsha:calls=3,usec=45,usec_per_call=15.00,...", by command
// name ("evalsha"). Other lines (section headers, other sections) are left
// out.
func Parse(info string) map[string]Command {
	stats := map[string]Command{}
	for line := range strings.Lines(info) {
		stat, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		name, fields, colon := strings.Cut(stat, ":")
		if !ok || !colon {
			continue
		}
		var c Command
		for field := range strings.SplitSeq(fields, ",") {
			key, value, _ := strings.Cut(field, "=")
			switch key {
			case "calls":
				c.Calls, _ = strconv.ParseInt(value, 10, 64)
			case "usec":
				c.Usec, _ = strconv.ParseInt(value, 10, 64)
			}
		}
		stats[name] = c
	}
	return stats
}
