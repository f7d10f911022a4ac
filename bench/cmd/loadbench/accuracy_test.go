package main

import (
	"testing"
	"time"
)

// The accuracy trials keep clear of the end of the key's own window, which
// starts at the key's offset within the minute, not at the minute.
func TestUntilWindowEndFollowsTheKeysOffset(t *testing.T) {
	minute := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at, offset, want time.Duration
	}{
		{28 * time.Second, 30 * time.Second, 2 * time.Second}, // the window ends at :30
		{31 * time.Second, 30 * time.Second, 59 * time.Second},
		{57 * time.Second, 0, 3 * time.Second},
		{0, 0, time.Minute},
		{500 * time.Millisecond, 59*time.Second + 999*time.Millisecond, 59*time.Second + 499*time.Millisecond},
	} {
		if got := untilWindowEnd(minute.Add(tc.at), tc.offset, time.Minute); got != tc.want {
			t.Errorf("at :%s with offset %s: %s to the window's end, want %s", tc.at, tc.offset, got, tc.want)
		}
	}
}
