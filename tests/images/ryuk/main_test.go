package main

// Unit tests of the stand-in (run by hand: `go test ./...` in this folder; the image build does
// not run them). The behaviour against a real engine is tested by
// tests/integration/test_ryuk_standin.py.

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseFilterLine(t *testing.T) {
	cases := map[string]string{
		"label=org.testcontainers.session-id=abc": `{"label":["org.testcontainers.session-id=abc"]}`,
		"label=a%3Db&label=c%3Dd":                 `{"label":["a=b","c=d"]}`,
		"label=c%3Dd&label=a%3Db&label=a%3Db":     `{"label":["a=b","c=d"]}`,
		"label=testing=true&health=unhealthy":     `{"health":["unhealthy"],"label":["testing=true"]}`,
		"label=something":                         `{"label":["something"]}`,
	}
	for line, want := range cases {
		fs, err := parseFilterLine(line)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if got := fs.JSON(); got != want {
			t.Errorf("%q: got %s, want %s", line, got, want)
		}
	}
	for _, bad := range []string{"", "label", "label=", "=x", "label=a;b", "label=%zz", "&"} {
		if fs, err := parseFilterLine(bad); err == nil {
			t.Errorf("%q: accepted as %s", bad, fs.JSON())
		}
	}
}

func TestLoadConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := loadConfig(env(nil))
	if err != nil || cfg.port != 8080 || cfg.reconnectionTimeout != 10*time.Second ||
		cfg.connectionTimeout != time.Minute || cfg.shutdownTimeout != 10*time.Minute ||
		cfg.removeRetries != 10 || cfg.retryOffset != -time.Second || cfg.apiVersion != "" ||
		cfg.dockerHost != "unix:///var/run/docker.sock" {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}
	cfg, err = loadConfig(env(map[string]string{
		"RYUK_PORT": "9000", "RYUK_RECONNECTION_TIMEOUT": "0.1s", "RYUK_CONNECTION_TIMEOUT": "2m",
		"DOCKER_API_VERSION": "v1.40", "DOCKER_HOST": "unix:///tmp/d.sock", "RYUK_VERBOSE": "true",
	}))
	if err != nil || cfg.port != 9000 || cfg.reconnectionTimeout != 100*time.Millisecond ||
		cfg.connectionTimeout != 2*time.Minute || cfg.apiVersion != "1.40" || !cfg.verbose ||
		cfg.dockerHost != "unix:///tmp/d.sock" {
		t.Fatalf("overrides: %+v %v", cfg, err)
	}
	for _, bad := range []map[string]string{
		{"RYUK_PORT": "70000"}, {"RYUK_RECONNECTION_TIMEOUT": "10"}, {"RYUK_CONNECTION_TIMEOUT": "-1s"},
		{"DOCKER_API_VERSION": "latest"}, {"RYUK_REMOVE_RETRIES": "-1"}, {"RYUK_VERBOSE": "maybe"},
	} {
		if _, err := loadConfig(env(bad)); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if !olderAPIVersion("1.40", "1.41") || olderAPIVersion("1.41", "1.41") || olderAPIVersion("1.43", "1.41") {
		t.Error("olderAPIVersion")
	}
}

func TestClientProtocol(t *testing.T) {
	server, client := net.Pipe()
	reg := newRegistry()
	events := make(chan event, 4)
	go serveClient(server, reg, events, false)
	go func() {
		_, _ = io.WriteString(client, "label=a%3Db&label=c%3Dd\r\nlabel=x\n\n  \nlabel=\nlabel=y")
	}()
	buf := make([]byte, 0, 64)
	tmp := make([]byte, 64)
	for strings.Count(string(buf), "\n") < 3 {
		n, err := client.Read(tmp)
		if err != nil {
			t.Fatalf("read: %v (got %q)", err, buf)
		}
		buf = append(buf, tmp[:n]...)
	}
	if want := "ACK\nACK\nERROR filter \"label\" without a value\n"; string(buf) != want {
		t.Fatalf("answers %q, want %q", buf, want)
	}
	_ = client.Close() // the last line has no line end: it counts at EOF (its ACK cannot be sent)
	if ev := <-events; ev.kind != evDisconnected {
		t.Fatalf("event %+v", ev)
	}
	var got []string
	for _, fs := range reg.snapshot() {
		got = append(got, fs.JSON())
	}
	want := `{"label":["a=b","c=d"]} {"label":["x"]} {"label":["y"]}`
	if strings.Join(got, " ") != want {
		t.Fatalf("filters %v, want %s", got, want)
	}
}

// fakeEngine answers the few Engine API calls the stand-in makes.
type fakeEngine struct {
	mu               sync.Mutex
	containers       map[string]map[string]string // id -> labels
	networks         map[string]map[string]string
	networkFailures  int // DELETE /networks answers 403 this many times first
	containerCreated int64
	calls            []string
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	path := strings.TrimPrefix(r.URL.Path, "/v1.41")
	var filters map[string][]string
	if s := r.URL.Query().Get("filters"); s != "" {
		_ = json.Unmarshal([]byte(s), &filters)
	}
	matches := func(labels map[string]string) bool {
		for _, want := range filters["label"] {
			k, v, hasValue := strings.Cut(want, "=")
			got, ok := labels[k]
			if !ok || (hasValue && got != v) {
				return false
			}
		}
		return true
	}
	reply := func(v any) { _ = json.NewEncoder(w).Encode(v) }
	switch {
	case r.Method == http.MethodGet && path == "/containers/json":
		var out []map[string]any
		for id, labels := range f.containers {
			if matches(labels) {
				out = append(out, map[string]any{"Id": id, "Names": []string{"/" + id}, "Labels": labels, "Created": f.containerCreated})
			}
		}
		reply(out)
	case r.Method == http.MethodDelete && strings.HasPrefix(path, "/containers/"):
		delete(f.containers, strings.TrimPrefix(path, "/containers/"))
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodGet && path == "/networks":
		if _, ok := filters["health"]; ok {
			w.WriteHeader(http.StatusBadRequest)
			reply(map[string]string{"message": "invalid filter 'health'"})
			return
		}
		out := []map[string]any{}
		for id, labels := range f.networks {
			if matches(labels) {
				out = append(out, map[string]any{"Id": id, "Name": id, "Created": "2024-01-01T00:00:00Z"})
			}
		}
		reply(out)
	case r.Method == http.MethodDelete && strings.HasPrefix(path, "/networks/"):
		if f.networkFailures > 0 {
			f.networkFailures--
			w.WriteHeader(http.StatusForbidden)
			reply(map[string]string{"message": "network has active endpoints"})
			return
		}
		delete(f.networks, strings.TrimPrefix(path, "/networks/"))
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodGet && path == "/volumes":
		reply(map[string]any{"Volumes": []any{}})
	case r.Method == http.MethodGet && path == "/images/json":
		reply([]any{})
	default:
		w.WriteHeader(http.StatusNotFound)
		reply(map[string]string{"message": "not here: " + r.URL.Path})
	}
}

func startFakeEngine(t *testing.T, f *fakeEngine) *dockerClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	d, err := newDockerClient("unix://"+sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d.version = "1.41"
	return d
}

func TestPrune(t *testing.T) {
	self := strings.Repeat("a", 64)
	reaper := strings.Repeat("b", 64)
	f := &fakeEngine{
		containers: map[string]map[string]string{
			"c1":   {"s": "1"},
			"c2":   {"s": "1", "other": "x"},
			"c3":   {"s": "2"},
			self:   {"s": "1"},
			reaper: {"s": "1", ryukLabel: "true"},
		},
		networks:         map[string]map[string]string{"n1": {"s": "1"}, "n2": {"s": "2"}},
		networkFailures:  2,
		containerCreated: time.Now().Add(-time.Hour).Unix(),
	}
	d := startFakeEngine(t, f)
	sets := []filterSet{{"label": {"s=1"}}, {"health": {"unhealthy"}, "label": {"s=1"}}}
	var slept []time.Duration
	ok := prune(kinds(d, selfIdentity{self[:12]}), sets, pruneOptions{
		retries: 3, retryOffset: -time.Second, retryInterval: time.Second,
		sleep: func(d time.Duration) { slept = append(slept, d) }, now: time.Now,
	})
	if !ok {
		t.Fatal("prune reported failures")
	}
	if _, ok := f.containers["c1"]; ok {
		t.Error("c1 not removed")
	}
	if _, ok := f.containers["c2"]; ok {
		t.Error("c2 not removed")
	}
	for _, keep := range []string{"c3", self, reaper} {
		if _, ok := f.containers[keep]; !ok {
			t.Errorf("%s removed", keep[:2])
		}
	}
	if _, ok := f.networks["n1"]; ok {
		t.Error("n1 not removed after retries")
	}
	if _, ok := f.networks["n2"]; !ok {
		t.Error("n2 removed")
	}
	if len(slept) != 2 {
		t.Errorf("slept %v, want two retry intervals (two refused network removals)", slept)
	}
}

func TestPruneWaitsForRecentResources(t *testing.T) {
	f := &fakeEngine{
		containers:       map[string]map[string]string{"c1": {"s": "1"}},
		networks:         map[string]map[string]string{},
		containerCreated: time.Now().Add(time.Hour).Unix(), // "just created", whatever the clock says
	}
	d := startFakeEngine(t, f)
	passes := 0
	ok := prune(kinds(d, selfIdentity{}), []filterSet{{"label": {"s=1"}}}, pruneOptions{
		retries: 2, retryOffset: -time.Second, retryInterval: time.Millisecond,
		sleep: func(time.Duration) { passes++ }, now: time.Now,
	})
	if !ok || passes != 2 {
		t.Fatalf("ok=%t passes=%d", ok, passes)
	}
	if _, ok := f.containers["c1"]; ok {
		t.Error("c1 not removed on the last pass")
	}
}

func TestRunTimeouts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := config{connectionTimeout: 50 * time.Millisecond, reconnectionTimeout: 200 * time.Millisecond, shutdownTimeout: time.Hour}

	// nobody connects
	start := time.Now()
	reason := run(cfg, ln, make(chan event), make(chan os.Signal))
	if !strings.Contains(reason, "first connection") || time.Since(start) > time.Second {
		t.Fatalf("no client: %q after %s", reason, time.Since(start))
	}

	// a reconnect within the reconnection timeout postpones the prune
	events := make(chan event)
	done := make(chan string)
	go func() { done <- run(cfg, ln, events, make(chan os.Signal)) }()
	events <- event{kind: evConnected, addr: "a"}
	start = time.Now()
	events <- event{kind: evDisconnected, addr: "a"}
	time.Sleep(100 * time.Millisecond)
	events <- event{kind: evConnected, addr: "b"}
	events <- event{kind: evDisconnected, addr: "b"}
	reason = <-done
	if elapsed := time.Since(start); elapsed < 290*time.Millisecond || !strings.Contains(reason, "reconnected") {
		t.Fatalf("reconnect: %q after %s", reason, elapsed)
	}

	// SIGTERM with a client connected: prune when it leaves, no reconnection wait
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	events = make(chan event)
	sigs := make(chan os.Signal, 1)
	go func() { done <- run(cfg, ln2, events, sigs) }()
	events <- event{kind: evConnected, addr: "a"}
	sigs <- syscall.SIGTERM
	events <- event{kind: evDisconnected, addr: "a"}
	if reason = <-done; !strings.Contains(reason, "shutdown requested") {
		t.Fatalf("sigterm: %q", reason)
	}
	if _, err := net.Dial("tcp", ln2.Addr().String()); err == nil {
		t.Error("listener still open after SIGTERM")
	}
}
