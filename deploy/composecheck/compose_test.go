// Package composecheck checks the repository's docker-compose.yml with
// compose-go, the Compose-spec loader docker compose itself uses (no Docker
// engine needed), and that the Dockerfile has what the compose file builds.
// It is a module of its own so that the main module does not depend on the
// loader.
package composecheck

import (
	"bufio"
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const (
	repoRoot    = "../.."
	composeFile = "../../docker-compose.yml"
	secret      = "0123456789abcdef-test-secret"
	redisPass   = "0123456789abcdef-test-redis-password"
)

// load parses docker-compose.yml with exactly env as the environment: no
// OS environment, no .env file.
func load(t *testing.T, env ...string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithWorkingDirectory(repoRoot),
		cli.WithEnv(env),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoad(t *testing.T) *types.Project {
	t.Helper()
	p, err := load(t, "KEYGATE_UPSTREAM_SECRET="+secret, "KEYGATE_REDIS_PASSWORD="+redisPass)
	if err != nil {
		t.Fatalf("loading docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("no service %q", name)
	}
	return s
}

func env(s types.ServiceConfig, key string) string {
	if v := s.Environment[key]; v != nil {
		return *v
	}
	return ""
}

// volumeAt returns the service's volume mounted at target.
func volumeAt(t *testing.T, s types.ServiceConfig, target string) types.ServiceVolumeConfig {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			return v
		}
	}
	t.Fatalf("service %s mounts nothing at %s", s.Name, target)
	return types.ServiceVolumeConfig{}
}

// wantNamedVolume checks that target is a named volume declared at the top
// level, so that the data outlives the container.
func wantNamedVolume(t *testing.T, p *types.Project, s types.ServiceConfig, target string) {
	t.Helper()
	v := volumeAt(t, s, target)
	if v.Type != types.VolumeTypeVolume {
		t.Errorf("%s: %s is a %s mount, want a named volume", s.Name, target, v.Type)
		return
	}
	if _, ok := p.Volumes[v.Source]; !ok {
		t.Errorf("%s: volume %q at %s is not declared under volumes:", s.Name, v.Source, target)
	}
}

// wantHealthy checks that s waits for dep to be healthy, and that dep has
// a health check to wait for.
func wantHealthy(t *testing.T, p *types.Project, s types.ServiceConfig, dep string) {
	t.Helper()
	d, ok := s.DependsOn[dep]
	if !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("%s: depends_on %s = %+v, want condition service_healthy", s.Name, dep, d)
	}
	if hc := service(t, p, dep).HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
		t.Errorf("%s waits for %s to be healthy, but %s has no health check", s.Name, dep, dep)
	}
}

// redisURL parses a redis:// URL and returns its host, port and database.
func redisURL(t *testing.T, what, raw string) (host, port, db string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "redis" {
		t.Fatalf("%s = %q: want a redis:// URL (%v)", what, raw, err)
	}
	return u.Hostname(), u.Port(), strings.TrimPrefix(u.Path, "/")
}

func TestServices(t *testing.T) {
	p := mustLoad(t)
	var names []string
	for n := range p.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"backend", "gateway", "redis"}) {
		t.Fatalf("services %v, want backend, gateway, redis", names)
	}
	for _, v := range []string{"redis-data", "uploads", "caddy-data"} {
		if _, ok := p.Volumes[v]; !ok {
			t.Errorf("volume %q not declared", v)
		}
	}
}

func TestRedis(t *testing.T) {
	p := mustLoad(t)
	r := service(t, p, "redis")
	if r.Image != "redis:7-alpine" {
		t.Errorf("image %q, want redis:7-alpine", r.Image)
	}
	cmd := strings.Join(r.Command, " ")
	if !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("command %q: want AOF persistence (--appendonly yes)", cmd)
	}
	wantNamedVolume(t, p, r, "/data")
	if r.HealthCheck == nil || !slices.Contains(r.HealthCheck.Test, "redis-cli") || !slices.Contains(r.HealthCheck.Test, "ping") {
		t.Errorf("healthcheck %+v, want redis-cli ping", r.HealthCheck)
	}
	if len(r.Ports) != 0 {
		t.Errorf("redis publishes %+v to the host: it must stay on the compose network", r.Ports)
	}
	// Two ACL users: the gateway's, with the password from the
	// environment, and the default one (the backend's), each on its own
	// keys, neither with dangerous commands. (e2e runs the command itself
	// against both programs.)
	const commands = "+@all -@dangerous -scan -randomkey -script|flush -function"
	for _, user := range []string{
		"--user gateway on >" + redisPass + " ~keygate:* ~{keygate:* " + commands,
		"--user default on nopass ~kgb:* " + commands,
	} {
		if !strings.Contains(cmd, user) {
			t.Errorf("command %q: want %q", cmd, user)
		}
	}
}

func TestBackend(t *testing.T) {
	p := mustLoad(t)
	b := service(t, p, "backend")
	if b.Build == nil || b.Build.Target != "backend" {
		t.Fatalf("build %+v, want the Dockerfile's backend target", b.Build)
	}
	host, port, err := net.SplitHostPort(env(b, "BACKEND_LISTEN"))
	if err != nil || (host != "0.0.0.0" && host != "") || port == "" {
		t.Errorf("BACKEND_LISTEN %q: want all interfaces (the gateway reaches it over the compose network)", env(b, "BACKEND_LISTEN"))
	}
	if len(b.Ports) != 0 {
		t.Errorf("backend publishes %+v to the host: only the gateway may reach it", b.Ports)
	}
	data := env(b, "BACKEND_DATA_DIR")
	if data == "" {
		t.Fatal("BACKEND_DATA_DIR not set")
	}
	wantNamedVolume(t, p, b, data)
	if h, _, _ := redisURL(t, "BACKEND_REDIS_URL", env(b, "BACKEND_REDIS_URL")); h != "redis" {
		t.Errorf("BACKEND_REDIS_URL host %q, want the redis service", h)
	}
	if got := env(b, "KEYGATE_UPSTREAM_SECRET"); got != secret {
		t.Errorf("KEYGATE_UPSTREAM_SECRET = %q, want the value from the environment", got)
	}
	wantHealthy(t, p, b, "redis")
	if hc := b.HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), ":"+port+"/healthz") {
		t.Errorf("healthcheck %+v: want the backend's /healthz on port %s", hc, port)
	}
	wantKnownVars(t, b, "../../cmd/backend/main.go")
}

func TestGateway(t *testing.T) {
	p := mustLoad(t)
	g := service(t, p, "gateway")
	b := service(t, p, "backend")
	if g.Build == nil || g.Build.Target != "gateway" {
		t.Fatalf("build %+v, want the Dockerfile's gateway target", g.Build)
	}

	// healthy once the config runs and the key store answers: keygate's
	// health on the admin API, not an admin route that answers whatever
	// the store does
	if hc := g.HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "localhost:2019/keygate/health") {
		t.Errorf("healthcheck %+v: want keygate's /keygate/health on the admin API", hc)
	}

	// keygate run with the root Caddyfile, mounted read-only.
	cmd := g.Command
	i := slices.Index(cmd, "--config")
	if len(cmd) == 0 || cmd[0] != "run" || i < 0 || i+1 >= len(cmd) {
		t.Fatalf("command %q, want run --config <Caddyfile>", cmd)
	}
	conf := volumeAt(t, g, cmd[i+1])
	root, _ := filepath.Abs(filepath.Join(repoRoot, "Caddyfile"))
	if conf.Type != types.VolumeTypeBind || !conf.ReadOnly || filepath.Clean(conf.Source) != root {
		t.Errorf("%s: %+v, want the root Caddyfile bind-mounted read-only", cmd[i+1], conf)
	}

	// The backend as the backend listens.
	_, bport, _ := net.SplitHostPort(env(b, "BACKEND_LISTEN"))
	if want := "backend:" + bport; env(g, "KEYGATE_BACKEND") != want {
		t.Errorf("KEYGATE_BACKEND = %q, want %q (the backend service's port)", env(g, "KEYGATE_BACKEND"), want)
	}
	// One secret for both.
	if gs, bs := env(g, "KEYGATE_UPSTREAM_SECRET"), env(b, "KEYGATE_UPSTREAM_SECRET"); gs != secret || gs != bs {
		t.Errorf("KEYGATE_UPSTREAM_SECRET: gateway %q, backend %q; want both the environment's value", gs, bs)
	}
	// The settings an operator changes pass from the host's environment,
	// with the Caddyfile's defaults when it has none of them.
	passed := []struct{ name, byDefault, set string }{
		{"KEYGATE_LEASE", "0", "64"},
		{"KEYGATE_RATE_LIMIT_HEADERS", "both", "x-ratelimit"},
		{"KEYGATE_ON_STORE_ERROR", "closed", "open"},
		{"KEYGATE_LOG_LEVEL", "INFO", "DEBUG"},
		{"KEYGATE_TRUSTED_PROXIES", "", "private_ranges"},
	}
	setAll := []string{"KEYGATE_UPSTREAM_SECRET=" + secret, "KEYGATE_REDIS_PASSWORD=" + redisPass}
	for _, v := range passed {
		if got := env(g, v.name); got != v.byDefault {
			t.Errorf("%s = %q by default, want %q", v.name, got, v.byDefault)
		}
		setAll = append(setAll, v.name+"="+v.set)
	}
	set, err := load(t, setAll...)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range passed {
		if got := env(service(t, set, "gateway"), v.name); got != v.set {
			t.Errorf("%s = %q with %s=%s in the environment", v.name, got, v.name, v.set)
		}
	}
	// Redis: the same server, another database than the backend's.
	gh, gp, gdb := redisURL(t, "KEYGATE_REDIS", env(g, "KEYGATE_REDIS"))
	if u, _ := url.Parse(env(g, "KEYGATE_REDIS")); u.User.Username() != "gateway" || !strings.HasSuffix(u.User.String(), ":"+redisPass) {
		t.Errorf("KEYGATE_REDIS %q: want the gateway's Redis user, with KEYGATE_REDIS_PASSWORD", env(g, "KEYGATE_REDIS"))
	}
	bh, bp, bdb := redisURL(t, "BACKEND_REDIS_URL", env(b, "BACKEND_REDIS_URL"))
	if gh != "redis" || gh != bh || gp != bp {
		t.Errorf("KEYGATE_REDIS %q and BACKEND_REDIS_URL %q: want the same redis service", env(g, "KEYGATE_REDIS"), env(b, "BACKEND_REDIS_URL"))
	}
	if gdb == bdb {
		t.Logf("gateway and backend share Redis database %q; their keys are kept apart by prefix", gdb)
	}

	// Caddy's data in a volume.
	data := env(g, "XDG_DATA_HOME")
	if data == "" {
		t.Fatal("XDG_DATA_HOME not set: Caddy's data would land in the image's home")
	}
	wantNamedVolume(t, p, g, data)

	// The site is published on the port it listens on.
	_, lport, err := net.SplitHostPort(env(g, "KEYGATE_LISTEN"))
	if err != nil {
		t.Fatalf("KEYGATE_LISTEN %q: %v", env(g, "KEYGATE_LISTEN"), err)
	}
	if !publishes(g, lport, "8080") {
		t.Errorf("ports %+v: want container port %s published as 8080", g.Ports, lport)
	}

	// The admin API mints keys and has no authentication: on the
	// container's loopback only, neither on the compose network (where any
	// other container could reach it) nor published.
	admin := env(g, "KEYGATE_ADMIN")
	ahost, aport, err := net.SplitHostPort(admin)
	if err != nil {
		t.Fatalf("KEYGATE_ADMIN %q: %v", admin, err)
	}
	if ahost != "localhost" && !net.ParseIP(ahost).IsLoopback() {
		t.Errorf("KEYGATE_ADMIN %q: want the container's loopback; every container on the network could reach it", admin)
	}
	for _, pc := range g.Ports {
		if strings.EqualFold(pc.Published, aport) || itoa(pc.Target) == aport {
			t.Errorf("port %+v: the admin API stays in the container (docker compose exec gateway keygate api-key …)", pc)
		}
	}

	wantHealthy(t, p, g, "backend")
	wantHealthy(t, p, g, "redis")
	if g.HealthCheck == nil || len(g.HealthCheck.Test) == 0 {
		t.Error("gateway has no health check")
	}
	wantKnownVars(t, g, "../../Caddyfile")
	wantCaddyfileVarsSet(t, g)
}

// publishes reports whether s publishes container port target as host port.
func publishes(s types.ServiceConfig, target, host string) bool {
	for _, pc := range s.Ports {
		if itoa(pc.Target) == target && pc.Published == host {
			return true
		}
	}
	return false
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// wantKnownVars checks that every KEYGATE_*/BACKEND_* variable the service
// sets is one that source (the program or Caddyfile reading them) mentions:
// a typo would otherwise silently fall back to a default.
func wantKnownVars(t *testing.T, s types.ServiceConfig, source string) {
	t.Helper()
	b, err := os.ReadFile(source)
	if err != nil {
		t.Fatal(err)
	}
	for k := range s.Environment {
		if (strings.HasPrefix(k, "KEYGATE_") || strings.HasPrefix(k, "BACKEND_")) && !strings.Contains(string(b), k) {
			t.Errorf("%s sets %s, which %s never reads", s.Name, k, source)
		}
	}
}

var caddyVar = regexp.MustCompile(`\{\$([A-Z0-9_]+)(:[^}]*)?\}`)

// wantCaddyfileVarsSet checks that the gateway sets every variable the
// Caddyfile uses without a default.
func wantCaddyfileVarsSet(t *testing.T, g types.ServiceConfig) {
	t.Helper()
	b, err := os.ReadFile("../../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range caddyVar.FindAllStringSubmatch(string(b), -1) {
		if m[2] != "" {
			continue
		}
		if _, ok := g.Environment[m[1]]; !ok {
			t.Errorf("the Caddyfile uses {$%s} without a default, and the gateway does not set it", m[1])
		}
	}
}

func TestSecretsAreRequired(t *testing.T) {
	_, err := load(t, "KEYGATE_REDIS_PASSWORD="+redisPass)
	if err == nil || !strings.Contains(err.Error(), "KEYGATE_UPSTREAM_SECRET") {
		t.Fatalf("loading without KEYGATE_UPSTREAM_SECRET: %v, want an error naming it", err)
	}
	_, err = load(t, "KEYGATE_UPSTREAM_SECRET="+secret)
	if err == nil || !strings.Contains(err.Error(), "KEYGATE_REDIS_PASSWORD") {
		t.Fatalf("loading without KEYGATE_REDIS_PASSWORD: %v, want an error naming it", err)
	}
}

// stage is one FROM block of the Dockerfile.
type stage struct {
	base, name string
	lines      []string
}

func dockerfile(t *testing.T, path string) map[string]*stage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	from := regexp.MustCompile(`(?i)^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$`)
	stages := map[string]*stage{}
	var cur *stage
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if m := from.FindStringSubmatch(line); m != nil {
			cur = &stage{base: m[1], name: strings.ToLower(m[2])}
			stages[cur.name] = cur
			if len(stages) == 1 {
				stages[""] = cur // the first stage
			}
			continue
		}
		if cur != nil {
			cur.lines = append(cur.lines, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// instr returns the arguments of the stage's instructions named name.
func (s *stage) instr(name string) []string {
	var out []string
	for _, l := range s.lines {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], name) {
			out = append(out, strings.TrimSpace(l[len(f[0]):]))
		}
	}
	return out
}

func TestDockerfileHasTheTargets(t *testing.T) {
	p := mustLoad(t)
	for _, name := range []string{"backend", "gateway"} {
		s := service(t, p, name)
		ctx := s.Build.Context
		if !filepath.IsAbs(ctx) {
			ctx = filepath.Join(repoRoot, ctx)
		}
		if root, _ := filepath.Abs(repoRoot); filepath.Clean(ctx) != root {
			t.Errorf("%s: build context %q, want the repository root", name, s.Build.Context)
		}
		file := s.Build.Dockerfile
		if file == "" {
			file = "Dockerfile"
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(ctx, file)
		}
		stages := dockerfile(t, file)
		if first := stages[""]; first == nil || !strings.HasPrefix(first.base, "golang:1.26") {
			t.Errorf("the first stage should build with golang:1.26, got %+v", first)
		}
		if b, _ := os.ReadFile(file); !strings.Contains(string(b), "CGO_ENABLED=0") {
			t.Errorf("%s: binaries must be static (CGO_ENABLED=0)", file)
		}
		st := stages[s.Build.Target]
		if st == nil {
			t.Fatalf("%s builds target %q, which %s does not have", name, s.Build.Target, file)
		}
		if !strings.Contains(st.base, "distroless") && !strings.Contains(st.base, "slim") {
			t.Errorf("target %s runs on %q, want distroless or debian-slim", st.name, st.base)
		}
		users := st.instr("USER")
		if len(users) == 0 {
			t.Errorf("target %s sets no USER: it would run as root", st.name)
		} else if u := users[len(users)-1]; u == "root" || u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:") {
			t.Errorf("target %s runs as %q", st.name, u)
		}
		// The health check's program is in the image.
		if hc := s.HealthCheck; hc != nil && len(hc.Test) > 1 && hc.Test[0] == "CMD" {
			if !copiesTo(st, hc.Test[1]) {
				t.Errorf("%s's health check runs %s, which target %s does not copy in", name, hc.Test[1], st.name)
			}
		}
	}
}

// copiesTo reports whether a COPY of the stage puts a file at path.
func copiesTo(s *stage, path string) bool {
	for _, args := range s.instr("COPY") {
		var f []string
		for _, a := range strings.Fields(args) {
			if !strings.HasPrefix(a, "--") {
				f = append(f, a)
			}
		}
		if len(f) < 2 {
			continue
		}
		dst := f[len(f)-1]
		for _, src := range f[:len(f)-1] {
			if dst == path || (strings.HasSuffix(dst, "/") && dst+filepath.Base(src) == path) {
				return true
			}
		}
	}
	return false
}

func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, want := range []string{".git", "bin"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}
