package storetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
)

// attemptLimit is the limit the passcode-attempt tests reserve against (the
// backend's is 5 too).
const attemptLimit = 5

// untilSlack allows for the millisecond precision of a window's end.
const untilSlack = 10 * time.Millisecond

// reserve reserves an attempt on id and checks that it was taken (want
// true) or refused (want false), with the end of a window that began no
// sooner than begun and no later than now.
func reserve(t *testing.T, s store.Store, id string, window time.Duration, begun time.Time, want bool) (string, time.Time) {
	t.Helper()
	token, until, err := s.ReservePasscodeAttempt(context.Background(), id, attemptLimit, window)
	if err != nil {
		t.Fatal(err)
	}
	if got := token != ""; got != want {
		t.Fatalf("reservation on %s taken: %v, want %v", id, got, want)
	}
	if until.Before(begun.Add(window-untilSlack)) || until.After(time.Now().Add(window)) {
		t.Fatalf("window ends %v, want within %v of a window of %v begun at %v", until, untilSlack, window, begun)
	}
	return token, until
}

// RunPasscodeAttempts tests the passcode-attempt reservations of a
// store.SecretStore.
func RunPasscodeAttempts(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("Limit", func(t *testing.T) {
		s := fresh(t, newStore)
		const id = "AAAAAAAAAAD1"
		begun := time.Now()
		tokens := map[string]bool{}
		var first time.Time
		for i := range attemptLimit {
			token, until := reserve(t, s, id, time.Hour, begun, true)
			if tokens[token] {
				t.Fatalf("token %q given twice", token)
			}
			tokens[token] = true
			if i == 0 {
				first = until
			}
		}
		// The next is refused, with the end of the window the first began.
		_, until := reserve(t, s, id, time.Hour, begun, false)
		if d := until.Sub(first); d < -untilSlack || d > untilSlack {
			t.Fatalf("refused until %v, the window began ending %v", until, first)
		}
		reserve(t, s, id, time.Hour, begun, false)
		// Counted per secret.
		reserve(t, s, "AAAAAAAAAAD2", time.Hour, time.Now(), true)
	})

	t.Run("ReleaseFreesASlot", func(t *testing.T) {
		s := fresh(t, newStore)
		const id = "AAAAAAAAAAD3"
		begun := time.Now()
		var tokens []string
		for range attemptLimit {
			token, _ := reserve(t, s, id, time.Hour, begun, true)
			tokens = append(tokens, token)
		}
		reserve(t, s, id, time.Hour, begun, false)
		for range 2 { // released twice, freed once
			if err := s.ReleasePasscodeAttempt(ctx, id, tokens[0]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.ReleasePasscodeAttempt(ctx, id, "not-a-token"); err != nil {
			t.Fatal(err)
		}
		reserve(t, s, id, time.Hour, begun, true)
		reserve(t, s, id, time.Hour, begun, false)
		// A token of another secret frees nothing here.
		other, _ := reserve(t, s, "AAAAAAAAAAD4", time.Hour, time.Now(), true)
		if err := s.ReleasePasscodeAttempt(ctx, id, other); err != nil {
			t.Fatal(err)
		}
		reserve(t, s, id, time.Hour, begun, false)
	})

	t.Run("ReservedAndReleasedAgain", func(t *testing.T) {
		// The legitimate readers of a secret read many times: each right
		// passcode gives its reservation back, so they never run out.
		s := fresh(t, newStore)
		const id = "AAAAAAAAAAD5"
		begun := time.Now()
		for range 4 * attemptLimit {
			token, _ := reserve(t, s, id, time.Hour, begun, true)
			if err := s.ReleasePasscodeAttempt(ctx, id, token); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("WindowEnds", func(t *testing.T) {
		s := fresh(t, newStore)
		const (
			id     = "AAAAAAAAAAD6"
			window = 500 * time.Millisecond
		)
		begun := time.Now()
		var (
			stale string
			until time.Time
		)
		for i := range attemptLimit {
			token, u := reserve(t, s, id, window, begun, true)
			if i == 0 {
				stale, until = token, u
			}
		}
		if time.Since(begun) < window/2 { // still comfortably in the window
			reserve(t, s, id, window, begun, false)
		}
		time.Sleep(time.Until(until) + 100*time.Millisecond)
		// Counting starts afresh, in a window of its own.
		begun = time.Now()
		reserve(t, s, id, window, begun, true)
		// A reservation of the ended window, given back, frees nothing in
		// this one.
		if err := s.ReleasePasscodeAttempt(ctx, id, stale); err != nil {
			t.Fatal(err)
		}
		for range attemptLimit - 1 {
			reserve(t, s, id, window, begun, true)
		}
		if time.Since(begun) < window/2 {
			reserve(t, s, id, window, begun, false)
		}
	})

	t.Run("Race", func(t *testing.T) {
		s := fresh(t, newStore)
		const id = "AAAAAAAAAAD7"
		var (
			mu      sync.Mutex
			taken   int
			refused int
		)
		start(Racers, func(int) {
			token, _, err := s.ReservePasscodeAttempt(ctx, id, attemptLimit, time.Hour)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Error(err)
			case token != "":
				taken++
			default:
				refused++
			}
		})
		if taken != attemptLimit || refused != Racers-attemptLimit {
			t.Fatalf("%d of %d concurrent reservations taken, %d refused; want %d taken", taken, Racers, refused, attemptLimit)
		}
	})

	t.Run("AuthorizeMayUseTheStore", func(t *testing.T) {
		// The backend reserves an attempt from inside authorize, also for a
		// view_once secret, which the store consumes afterwards.
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAD8", store.ViewOnce, time.Hour)
		sec.PasscodeHash = "right"
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := s.OpenSecret(ctx, sec.ID, func(got store.Secret) error {
				token, _, err := s.ReservePasscodeAttempt(ctx, got.ID, attemptLimit, time.Hour)
				if err != nil {
					return err
				}
				return s.ReleasePasscodeAttempt(ctx, got.ID, token)
			})
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("OpenSecret did not return: authorize waits for the store")
		}
		if _, err := s.OpenSecret(ctx, sec.ID, nil); err == nil {
			t.Fatal("the view_once secret was not consumed")
		}
	})
}
