package keygate

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/redistest"
)

// On a Redis Cluster (redis_cluster) the gateway works as on one server:
// keys made, listed, rotated and deleted through the CLI, validated and
// limited on every request, with or without leases, whichever of the three
// nodes holds each key. Without redis_cluster the config does not load,
// and the error says why.
func TestGatewayOnRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	g := startGateway(t, fmt.Sprintf("keygate {\n\t\tredis %s\n\t\tredis_cluster\n\t\ttimeout 300ms\n\t}", cluster.URL()), `
	handle /leased {
		keygate {
			rate_limit 1000 1m
			lease 16
		}
		reverse_proxy {upstream}
	}
	handle {
		keygate {
			rate_limit 3 1m
		}
		reverse_proxy {upstream}
	}`)
	keys := make([]keyView, 8)
	for i := range keys {
		keys[i] = generate(t, "--name", fmt.Sprintf("tenant-%d", i))
	}
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	if len(listed) != len(keys) {
		t.Fatalf("listed %d keys, want %d", len(listed), len(keys))
	}
	for _, k := range keys {
		for i := range 3 {
			r := g.get("/", bearer(k.Key)...)
			if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Name") != k.Name {
				t.Fatalf("%s, request %d: %d %s", k.Name, i+1, r.status, r.body)
			}
			wantRateHeaders(t, r, "key", 3, 60, int64(2-i))
		}
		wantProblem(t, g.get("/", bearer(k.Key)...), http.StatusTooManyRequests, "Too much request. Try again later.")
		for range 20 {
			if r := g.get("/leased", bearer(k.Key)...); r.status != http.StatusOK {
				t.Fatalf("%s, leased: %d %s", k.Name, r.status, r.body)
			}
		}
	}

	var rotated keyView
	mustJSON(t, mustCLI(t, "rotate", keys[0].Name, "--json"), &rotated)
	wantProblem(t, g.get("/", bearer(keys[0].Key)...), http.StatusUnauthorized, "Invalid API key")
	if r := g.get("/leased", bearer(rotated.Key)...); r.status != http.StatusOK {
		t.Fatalf("the rotated key: %d %s", r.status, r.body)
	}
	mustCLI(t, "delete", keys[1].Name)
	// a leased key's deletion reaches the gateway through the epoch, which
	// lives on a node of its own
	waitFor(t, func() bool { return g.get("/leased", bearer(keys[1].Key)...).status == http.StatusUnauthorized })

	cfg := fmt.Sprintf("{\n\tadmin %s\n\tkeygate {\n\t\tredis %s\n\t}\n}\n", adminAddr, cluster.URL())
	resp, err := client.Post("http://"+adminAddr+"/load", "text/caddyfile", strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || !strings.Contains(string(body), "add redis_cluster") {
		t.Fatalf("a cluster URL without redis_cluster: %d %s", resp.StatusCode, body)
	}
}

// Behind Redis Sentinel (redis_sentinel) the gateway asks the Sentinel for
// the primary, and keeps serving across a failover: requests get 503 only
// until the Sentinel has promoted the replica.
func TestGatewayBehindRedisSentinel(t *testing.T) {
	primary, replica := redistest.Start(t), redistest.Start(t)
	replica.Follow(t, primary)
	sentinel := redistest.StartSentinel(t, primary, "keygate-primary", 1)
	g := startGateway(t, fmt.Sprintf("keygate {\n\t\tredis %s\n\t\tredis_sentinel %s\n\t\ttimeout 300ms\n\t}", sentinel.URL(), sentinel.Master), `
	keygate {
		rate_limit 1000 1m
	}
	reverse_proxy {upstream}`)
	k := generate(t, "--name", "sentinel")
	if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Name") != "sentinel" {
		t.Fatalf("before the failover: %d %s", r.status, r.body)
	}
	replica.CatchUp(t, primary) // else the failover may lose the key: replication is asynchronous
	sentinel.Failover(t)
	waitFor(t, func() bool { return g.get("/", bearer(k.Key)...).status == http.StatusOK })
	if out := mustCLI(t, "list"); !strings.Contains(out, "sentinel") {
		t.Fatalf("after the failover the key is not listed:\n%s", out)
	}
}
