package redistest

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// ScriptsRunTwice is a go-redis hook (Client.AddHook) that, once Armed,
// sends every script (EVAL, EVALSHA) twice, as go-redis itself sends a
// command again when it loses its reply (MaxRetries): a test of whether a
// script's caller copes with the second run's answer.
type ScriptsRunTwice struct{ Armed atomic.Bool }

func (*ScriptsRunTwice) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *ScriptsRunTwice) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); h.Armed.Load() && (name == "eval" || name == "evalsha") {
			if err := next(ctx, cmd); err != nil {
				return err // NOSCRIPT: go-redis sends EVAL next, run twice here
			}
		}
		return next(ctx, cmd)
	}
}

func (*ScriptsRunTwice) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
