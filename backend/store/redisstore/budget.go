package redisstore

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// callBudget is a go-redis hook that bounds each command and pipeline that
// comes without a deadline (a request's context has none) by one whole
// attempt's timeouts: go-redis bounds each dial, read and write, but tries
// a dial five times and retries the command, so one call to a Redis that
// drops packets (a network partition, a firewall) took about half a
// minute at the default 5 s dial timeout, and the request through the
// gateway with it.
type callBudget time.Duration

// budgetOf is one attempt of rdb's: a dial, a write and a read.
func budgetOf(rdb redis.UniversalClient) callBudget {
	var dial, read, write time.Duration
	switch c := rdb.(type) {
	case *redis.Client: // a failover client too
		o := c.Options()
		dial, read, write = o.DialTimeout, o.ReadTimeout, o.WriteTimeout
	case *redis.ClusterClient:
		o := c.Options()
		dial, read, write = o.DialTimeout, o.ReadTimeout, o.WriteTimeout
	}
	bound(&dial, &read, &write) // go-redis's own defaults are longer
	return callBudget(dial + read + write)
}

func (b callBudget) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, time.Duration(b))
}

func (b callBudget) DialHook(next redis.DialHook) redis.DialHook { return next }

func (b callBudget) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		ctx, cancel := b.bound(ctx)
		defer cancel()
		return next(ctx, cmd)
	}
}

func (b callBudget) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		ctx, cancel := b.bound(ctx)
		defer cancel()
		return next(ctx, cmds)
	}
}
