package main

import (
	"testing"
	"time"
)

func TestMedianCPUTakesEachFieldsOwnMedian(t *testing.T) {
	us := time.Microsecond
	uses := []cpuUse{
		{proxy: 300 * us, upstream: 90 * us, wrk: 30 * us, redis: 9 * us, machine: 450 * us, stolen: 0},
		{proxy: 280 * us, upstream: 110 * us, wrk: 28 * us, redis: 7 * us, machine: 470 * us, stolen: 50 * us},
		{proxy: 320 * us, upstream: 100 * us, wrk: 35 * us, redis: 8 * us, machine: 430 * us, stolen: 5 * us},
	}
	got := medianCPU(uses)
	want := cpuUse{proxy: 300 * us, upstream: 100 * us, wrk: 30 * us, redis: 8 * us, machine: 450 * us, stolen: 5 * us}
	if got != want {
		t.Fatalf("medianCPU = %+v, want %+v", got, want)
	}
	if other := got.other(); other != 12*us {
		t.Errorf("other = %v, want 12µs (450 - 300 - 100 - 30 - 8)", other)
	}
	if s := fmtCPUUse(got); s != "300.0µs\t100.0µs\t30.0µs\t8.0µs\t12.0µs\t450.0µs\t5.0µs\t" {
		t.Errorf("fmtCPUUse = %q", s)
	}
}
