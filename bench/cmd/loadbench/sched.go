package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// schedUse is how a proxy's threads fared with the kernel's scheduler
// during a run, per request served: the time they were ready to run but
// waited for a CPU (every request a thread handles waits with it, so this
// is where a tail of latency comes from that CPU time does not show), and
// how often they were switched out, having blocked (voluntary: an idle
// thread parked, a read that would block) or been preempted (involuntary).
type schedUse struct {
	runQueueWait         time.Duration
	voluntary, preempted float64
}

// sampleSched is process pid's scheduling counts so far, summed over its
// threads: run-queue wait from each thread's schedstat, switches from its
// status. Threads that exited are not counted (Go's runtime keeps its
// threads). Zeros where /proc is not there.
func sampleSched(pid int) schedUse {
	var u schedUse
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*")
	for _, task := range tasks {
		if b, err := os.ReadFile(filepath.Join(task, "schedstat")); err == nil {
			// time on CPU, time waiting on a run queue (ns), timeslices
			if f := strings.Fields(string(b)); len(f) >= 2 {
				ns, _ := strconv.ParseInt(f[1], 10, 64)
				u.runQueueWait += time.Duration(ns)
			}
		}
		if b, err := os.ReadFile(filepath.Join(task, "status")); err == nil {
			u.voluntary += statusField(b, "voluntary_ctxt_switches:")
			u.preempted += statusField(b, "nonvoluntary_ctxt_switches:")
		}
	}
	return u
}

// statusField is the number after name at the start of a line of a
// /proc status file, 0 if there is none.
func statusField(status []byte, name string) float64 {
	for line := range bytes.Lines(status) {
		if v, ok := bytes.CutPrefix(line, []byte(name)); ok {
			n, _ := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
			return n
		}
	}
	return 0
}

// perRequest is the change from before to u over n requests.
func (u schedUse) perRequest(before schedUse, n int64) schedUse {
	return schedUse{
		runQueueWait: (u.runQueueWait - before.runQueueWait) / time.Duration(n),
		voluntary:    (u.voluntary - before.voluntary) / float64(n),
		preempted:    (u.preempted - before.preempted) / float64(n),
	}
}

// medianSched is the field-by-field median of uses.
func medianSched(uses []schedUse) schedUse {
	return schedUse{
		runQueueWait: time.Duration(medianBy(uses, func(u schedUse) float64 { return float64(u.runQueueWait) })),
		voluntary:    medianBy(uses, func(u schedUse) float64 { return u.voluntary }),
		preempted:    medianBy(uses, func(u schedUse) float64 { return u.preempted }),
	}
}

// fmtSchedUse renders one side of the scheduling table, each column
// ending in a tab.
func fmtSchedUse(u schedUse) string {
	return fmtMicros(u.runQueueWait) + "\t" + strconv.FormatFloat(u.voluntary, 'f', 3, 64) + "\t" + strconv.FormatFloat(u.preempted, 'f', 3, 64) + "\t"
}
