package main

import (
	"os"
	"testing"
	"time"
)

func TestSampleSchedCountsEveryThreadsSwitches(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc")
	}
	before := sampleSched(os.Getpid())
	// each sleep parks a thread, a voluntary switch
	for range 20 {
		time.Sleep(time.Millisecond)
	}
	after := sampleSched(os.Getpid())
	if d := after.voluntary - before.voluntary; d < 10 {
		t.Errorf("voluntary switches over 20 sleeps: %v, want at least 10", d)
	}
	if after.runQueueWait < before.runQueueWait || after.preempted < before.preempted {
		t.Errorf("counts went back: %+v then %+v", before, after)
	}
}

func TestSchedPerRequestAndMedian(t *testing.T) {
	us := time.Microsecond
	before := schedUse{runQueueWait: 1000 * us, voluntary: 100, preempted: 10}
	after := schedUse{runQueueWait: 3000 * us, voluntary: 500, preempted: 30}
	if got, want := after.perRequest(before, 100), (schedUse{runQueueWait: 20 * us, voluntary: 4, preempted: 0.2}); got != want {
		t.Errorf("perRequest = %+v, want %+v", got, want)
	}
	got := medianSched([]schedUse{
		{runQueueWait: 30 * us, voluntary: 1, preempted: 0.5},
		{runQueueWait: 10 * us, voluntary: 3, preempted: 0.1},
		{runQueueWait: 20 * us, voluntary: 2, preempted: 0.9},
	})
	if want := (schedUse{runQueueWait: 20 * us, voluntary: 2, preempted: 0.5}); got != want {
		t.Errorf("medianSched = %+v, want %+v", got, want)
	}
	if s := fmtSchedUse(got); s != "20.0µs\t2.000\t0.500\t" {
		t.Errorf("fmtSchedUse = %q", s)
	}
	if n := statusField([]byte("Name:\tx\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t7\n"), "nonvoluntary_ctxt_switches:"); n != 7 {
		t.Errorf("statusField = %v, want 7", n)
	}
}
