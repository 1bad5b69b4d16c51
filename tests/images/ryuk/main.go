// Command ryuk is pytest-aikernel's stand-in for testcontainers' Ryuk reaper image
// (testcontainers/ryuk). It was written for this project from Ryuk's documented protocol (its
// README and the testcontainers clients' documentation); it is not moby-ryuk and shares no code
// with it. See README.md next to this file.
//
// Protocol: clients connect over TCP (port 8080, RYUK_PORT) and send lines, each a filter set in
// URL query-string form (`label=org.testcontainers.session-id=abc`, `label=a%3Db&label=c%3Dd`);
// every accepted line is answered with "ACK\n" and remembered. Once every client has
// disconnected and none connected again within RYUK_RECONNECTION_TIMEOUT (or none ever connected
// within RYUK_CONNECTION_TIMEOUT), every container, network, volume and image matching any
// remembered filter set is removed through the Docker Engine API and the program exits.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ryukLabel marks a reaper container (testcontainers clients set it on the Ryuk container they
// start); such containers are never removed, nor is this program's own container.
const ryukLabel = "org.testcontainers.ryuk"

// defaultAPIVersion is the Docker Engine API version used unless DOCKER_API_VERSION is set (or
// the engine only speaks an older one).
const defaultAPIVersion = "1.41"

// maxLineLength bounds one filter line; longer lines are rejected.
const maxLineLength = 64 * 1024

var logger = log.New(os.Stdout, "", log.LstdFlags|log.Lmicroseconds)

func logf(format string, args ...any) { logger.Printf(format, args...) }

// ---------------------------------------------------------------------------------------------
// configuration

type config struct {
	port                 int
	connectionTimeout    time.Duration
	reconnectionTimeout  time.Duration
	requestTimeout       time.Duration
	shutdownTimeout      time.Duration
	removeRetries        int
	retryOffset          time.Duration
	changesRetryInterval time.Duration
	verbose              bool
	dockerHost           string
	apiVersion           string // "" = default, lowered to the engine's version if older
}

func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		port:                 8080,
		connectionTimeout:    60 * time.Second,
		reconnectionTimeout:  10 * time.Second,
		requestTimeout:       10 * time.Second,
		shutdownTimeout:      10 * time.Minute,
		removeRetries:        10,
		retryOffset:          -time.Second,
		changesRetryInterval: time.Second,
		dockerHost:           "unix:///var/run/docker.sock",
	}
	var errs []error
	duration := func(name string, dst *time.Duration, allowNegative bool) {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			return
		}
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s=%q: not a Go duration (e.g. 10s, 1m30s): %v", name, v, err))
		case d < 0 && !allowNegative:
			errs = append(errs, fmt.Errorf("%s=%q: must not be negative", name, v))
		default:
			*dst = d
		}
	}
	duration("RYUK_CONNECTION_TIMEOUT", &cfg.connectionTimeout, false)
	duration("RYUK_RECONNECTION_TIMEOUT", &cfg.reconnectionTimeout, false)
	duration("RYUK_REQUEST_TIMEOUT", &cfg.requestTimeout, false)
	duration("RYUK_SHUTDOWN_TIMEOUT", &cfg.shutdownTimeout, false)
	duration("RYUK_RETRY_OFFSET", &cfg.retryOffset, true)
	duration("RYUK_CHANGES_RETRY_INTERVAL", &cfg.changesRetryInterval, false)
	if v := strings.TrimSpace(getenv("RYUK_PORT")); v != "" {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			errs = append(errs, fmt.Errorf("RYUK_PORT=%q: not a port number (0-65535)", v))
		} else {
			cfg.port = int(p)
		}
	}
	if v := strings.TrimSpace(getenv("RYUK_REMOVE_RETRIES")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("RYUK_REMOVE_RETRIES=%q: not a whole number >= 0", v))
		} else {
			cfg.removeRetries = n
		}
	}
	if v := strings.TrimSpace(getenv("RYUK_VERBOSE")); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("RYUK_VERBOSE=%q: not a boolean (true/false)", v))
		} else {
			cfg.verbose = b
		}
	}
	if v := strings.TrimSpace(getenv("DOCKER_HOST")); v != "" {
		cfg.dockerHost = v
	}
	if v := strings.TrimPrefix(strings.TrimSpace(getenv("DOCKER_API_VERSION")), "v"); v != "" {
		if _, ok := parseAPIVersion(v); !ok {
			errs = append(errs, fmt.Errorf("DOCKER_API_VERSION=%q: expected MAJOR.MINOR, e.g. 1.41", v))
		} else {
			cfg.apiVersion = v
		}
	}
	return cfg, errors.Join(errs...)
}

var apiVersionRE = regexp.MustCompile(`^(\d+)\.(\d+)$`)

func parseAPIVersion(v string) ([2]int, bool) {
	m := apiVersionRE.FindStringSubmatch(v)
	if m == nil {
		return [2]int{}, false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return [2]int{major, minor}, true
}

// olderAPIVersion reports whether API version a is older than b.
func olderAPIVersion(a, b string) bool {
	va, okA := parseAPIVersion(a)
	vb, okB := parseAPIVersion(b)
	if !okA || !okB {
		return false
	}
	return va[0] < vb[0] || (va[0] == vb[0] && va[1] < vb[1])
}

// ---------------------------------------------------------------------------------------------
// filter sets

// filterSet is one client line: filter name -> values, all of which must match (Docker's
// semantics for several values of `label`).
type filterSet map[string][]string

// parseFilterLine parses one line in URL query-string form. It refuses lines that could match
// everything (no filter, a filter without a value), since a reaper must never widen a filter.
func parseFilterLine(line string) (filterSet, error) {
	q, err := url.ParseQuery(line)
	if err != nil {
		return nil, fmt.Errorf("not in query-string form: %v", err)
	}
	if len(q) == 0 {
		return nil, errors.New("no filter in line")
	}
	fs := filterSet{}
	for name, values := range q {
		if name == "" {
			return nil, errors.New("filter without a name")
		}
		seen := map[string]bool{}
		for _, v := range values {
			if v == "" {
				return nil, fmt.Errorf("filter %q without a value", name)
			}
			if !seen[v] {
				seen[v] = true
				fs[name] = append(fs[name], v)
			}
		}
		sort.Strings(fs[name])
	}
	return fs, nil
}

// JSON is the filter set in the form of the Engine API's `filters` query parameter; it doubles as
// the set's identity (encoding/json sorts map keys, the values are sorted).
func (fs filterSet) JSON() string {
	b, _ := json.Marshal(map[string][]string(fs))
	return string(b)
}

type registry struct {
	mu    sync.Mutex
	order []filterSet
	known map[string]bool
}

func newRegistry() *registry { return &registry{known: map[string]bool{}} }

// add remembers fs and reports whether it was new.
func (r *registry) add(fs filterSet) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := fs.JSON()
	if r.known[k] {
		return false
	}
	r.known[k] = true
	r.order = append(r.order, fs)
	return true
}

func (r *registry) snapshot() []filterSet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]filterSet(nil), r.order...)
}

// ---------------------------------------------------------------------------------------------
// client connections

type eventKind int

const (
	evConnected eventKind = iota
	evDisconnected
)

type event struct {
	kind eventKind
	addr string
	seen chan struct{} // closed by the main loop once it has counted the event (evConnected)
}

func acceptLoop(ln net.Listener, reg *registry, events chan<- event, verbose bool) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			logf("accept failed: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		// counted (and logged) before its first line is read
		seen := make(chan struct{})
		events <- event{evConnected, conn.RemoteAddr().String(), seen}
		<-seen
		go serveClient(conn, reg, events, verbose)
	}
}

// serveClient reads filter lines until the client closes its side (a last line without a line
// end counts too: `printf 'label=x' | nc host 8080`).
func serveClient(conn net.Conn, reg *registry, events chan<- event, verbose bool) {
	addr := conn.RemoteAddr().String()
	defer func() {
		_ = conn.Close()
		events <- event{kind: evDisconnected, addr: addr}
	}()
	r := bufio.NewReaderSize(conn, 4096)
	for {
		line, tooLong, err := readLine(r)
		if tooLong {
			logf("client %s: line longer than %d bytes, ignored", addr, maxLineLength)
			_, _ = io.WriteString(conn, "ERROR line too long\n")
		} else if strings.TrimSpace(line) != "" {
			handleLine(conn, addr, line, reg, verbose)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && verbose {
				logf("client %s: read: %v", addr, err)
			}
			return
		}
	}
}

// readLine returns the next line without its "\n" or "\r\n"; tooLong when it exceeded
// maxLineLength (its rest is skipped).
func readLine(r *bufio.Reader) (line string, tooLong bool, err error) {
	var b []byte
	for {
		chunk, isPrefix, e := r.ReadLine()
		if !tooLong {
			b = append(b, chunk...)
			if len(b) > maxLineLength {
				tooLong, b = true, nil
			}
		}
		if e != nil {
			return string(b), tooLong, e
		}
		if !isPrefix {
			return string(b), tooLong, nil
		}
	}
}

func handleLine(w io.Writer, addr, line string, reg *registry, verbose bool) {
	fs, err := parseFilterLine(line)
	if err != nil {
		logf("client %s: refused filter line %q: %v", addr, line, err)
		_, _ = fmt.Fprintf(w, "ERROR %v\n", err)
		return
	}
	if reg.add(fs) {
		logf("adding filter %s (from %s)", fs.JSON(), addr)
	} else if verbose {
		logf("filter %s (from %s) already known", fs.JSON(), addr)
	}
	if _, err := io.WriteString(w, "ACK\n"); err != nil && verbose {
		logf("client %s: could not send ACK: %v", addr, err)
	}
}

// ---------------------------------------------------------------------------------------------
// Docker Engine API (plain HTTP, unix socket or tcp://)

type dockerClient struct {
	http    *http.Client
	root    string // scheme://host without the version prefix
	version string
	timeout time.Duration
}

func newDockerClient(host string, timeout time.Duration) (*dockerClient, error) {
	// a transport of our own: no proxy from the environment, no HTTP/2
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	var root string
	switch {
	case strings.HasPrefix(host, "unix://"):
		path := strings.TrimPrefix(host, "unix://")
		if path == "" {
			return nil, fmt.Errorf("DOCKER_HOST=%q: no socket path", host)
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		root = "http://docker"
	case strings.HasPrefix(host, "tcp://"):
		hostport := strings.TrimSuffix(strings.TrimPrefix(host, "tcp://"), "/")
		if hostport == "" {
			return nil, fmt.Errorf("DOCKER_HOST=%q: no address", host)
		}
		root = "http://" + hostport
	default:
		return nil, fmt.Errorf("DOCKER_HOST=%q: only unix:// and tcp:// (plain HTTP) are supported", host)
	}
	return &dockerClient{http: &http.Client{Transport: tr}, root: root, timeout: timeout}, nil
}

type apiError struct {
	method, path string
	status       int
	message      string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.method, e.path, e.status, e.message)
}

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status
	}
	return 0
}

// call does one request under /v<version>; out (if not nil) receives the JSON answer.
func (d *dockerClient) call(method, path string, query url.Values, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	u := d.root
	if d.version != "" {
		u += "/v" + d.version
	}
	u += path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		msg := strings.TrimSpace(string(body))
		var m struct{ Message string }
		if json.Unmarshal(body, &m) == nil && m.Message != "" {
			msg = m.Message
		}
		return &apiError{method, path, resp.StatusCode, msg}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
		}
	}
	return nil
}

// ping checks the engine and returns its (highest) API version from the Api-Version header.
func (d *dockerClient) ping() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.root+"/_ping", nil)
	if err != nil {
		return "", err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /_ping: HTTP %d", resp.StatusCode)
	}
	return resp.Header.Get("Api-Version"), nil
}

// ---------------------------------------------------------------------------------------------
// pruning

type resource struct {
	id, name string
	created  time.Time
}

// kind is one resource type: how to list the ones matching a filter set and remove one.
type kind struct {
	plural string
	list   func(fs filterSet) ([]resource, error)
	remove func(r resource) error
}

type selfIdentity struct{ id string }

// isSelf reports whether a container ID (full or short) is this program's own container.
func (s selfIdentity) isSelf(id string) bool {
	if s.id == "" || id == "" {
		return false
	}
	return strings.HasPrefix(s.id, id) || strings.HasPrefix(id, s.id)
}

var containerIDRE = regexp.MustCompile(`[0-9a-f]{64}`)

// ownContainerID finds the ID of the container this program runs in: from the bind mounts
// Docker makes for /etc/hostname etc. (.../containers/<id>/hostname), else the cgroup path, else
// the default hostname (the short ID). "" outside a container.
func ownContainerID() string {
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.Index(line, "/containers/"); i >= 0 {
				if m := containerIDRE.FindString(line[i:]); m != "" {
					return m
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		if m := containerIDRE.FindString(string(b)); m != "" {
			return m
		}
	}
	if h, err := os.Hostname(); err == nil && regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(h) {
		return h
	}
	return ""
}

func kinds(d *dockerClient, self selfIdentity) []kind {
	filterQuery := func(fs filterSet, extra url.Values) url.Values {
		q := url.Values{"filters": {fs.JSON()}}
		for k, v := range extra {
			q[k] = v
		}
		return q
	}
	return []kind{
		{
			plural: "containers",
			list: func(fs filterSet) ([]resource, error) {
				var cs []struct {
					ID      string `json:"Id"`
					Names   []string
					Created int64
					Labels  map[string]string
				}
				if err := d.call(http.MethodGet, "/containers/json", filterQuery(fs, url.Values{"all": {"1"}}), &cs); err != nil {
					return nil, err
				}
				var out []resource
				for _, c := range cs {
					if _, isReaper := c.Labels[ryukLabel]; isReaper || self.isSelf(c.ID) {
						continue
					}
					name := ""
					if len(c.Names) > 0 {
						name = strings.TrimPrefix(c.Names[0], "/")
					}
					out = append(out, resource{c.ID, name, time.Unix(c.Created, 0)})
				}
				return out, nil
			},
			remove: func(r resource) error {
				return d.call(http.MethodDelete, "/containers/"+url.PathEscape(r.id),
					url.Values{"force": {"1"}, "v": {"1"}}, nil)
			},
		},
		{
			plural: "networks",
			list: func(fs filterSet) ([]resource, error) {
				var ns []struct {
					ID      string `json:"Id"`
					Name    string
					Created time.Time
				}
				if err := d.call(http.MethodGet, "/networks", filterQuery(fs, nil), &ns); err != nil {
					return nil, err
				}
				var out []resource
				for _, n := range ns {
					switch n.Name {
					case "bridge", "host", "none": // predefined, cannot be removed
						continue
					}
					out = append(out, resource{n.ID, n.Name, n.Created})
				}
				return out, nil
			},
			remove: func(r resource) error {
				return d.call(http.MethodDelete, "/networks/"+url.PathEscape(r.id), nil, nil)
			},
		},
		{
			plural: "volumes",
			list: func(fs filterSet) ([]resource, error) {
				var vs struct {
					Volumes []struct {
						Name      string
						CreatedAt string
					}
				}
				if err := d.call(http.MethodGet, "/volumes", filterQuery(fs, nil), &vs); err != nil {
					return nil, err
				}
				var out []resource
				for _, v := range vs.Volumes {
					created, _ := time.Parse(time.RFC3339Nano, v.CreatedAt)
					out = append(out, resource{v.Name, v.Name, created})
				}
				return out, nil
			},
			remove: func(r resource) error {
				return d.call(http.MethodDelete, "/volumes/"+url.PathEscape(r.id), nil, nil)
			},
		},
		{
			plural: "images",
			list: func(fs filterSet) ([]resource, error) {
				var is []struct {
					ID       string `json:"Id"`
					RepoTags []string
					Created  int64
				}
				if err := d.call(http.MethodGet, "/images/json", filterQuery(fs, nil), &is); err != nil {
					return nil, err
				}
				var out []resource
				for _, i := range is {
					name := ""
					if len(i.RepoTags) > 0 && i.RepoTags[0] != "<none>:<none>" {
						name = strings.Join(i.RepoTags, ",")
					}
					out = append(out, resource{i.ID, name, time.Unix(i.Created, 0)})
				}
				return out, nil
			},
			remove: func(r resource) error {
				// force: an image with several tags can only be removed by ID that way
				return d.call(http.MethodDelete, "/images/"+url.PathEscape(r.id), url.Values{"force": {"1"}}, nil)
			},
		},
	}
}

type pruneOptions struct {
	retries       int           // extra passes after the first one
	retryOffset   time.Duration // resources created after passStart+retryOffset wait for a later pass
	retryInterval time.Duration
	verbose       bool
	sleep         func(time.Duration)
	now           func() time.Time
}

// pruneKind removes every resource of one kind matching any of the filter sets. A pass lists
// and removes; another pass follows (after retryInterval, at most `retries` more) while a
// removal failed, a listing failed, or a match was created too recently (see RYUK_RETRY_OFFSET):
// e.g. a network whose last container is still being detached. Returns the number removed and
// the errors of the last pass.
func pruneKind(k kind, sets []filterSet, o pruneOptions) (int, []error) {
	removed := 0
	notApplicable := map[string]bool{}
	for pass := 0; ; pass++ {
		lastPass := pass >= o.retries
		threshold := o.now().Add(o.retryOffset)
		var errs []error
		again := false
		found := map[string]resource{}
		var order []string
		for _, fs := range sets {
			if notApplicable[fs.JSON()] {
				continue
			}
			rs, err := k.list(fs)
			if err != nil {
				if statusOf(err) == http.StatusBadRequest {
					// e.g. `health=unhealthy` is a container filter: the engine refuses it
					// for networks; such a set cannot select resources of this kind
					logf("filter %s does not apply to %s (%v)", fs.JSON(), k.plural, err)
					notApplicable[fs.JSON()] = true
					continue
				}
				errs = append(errs, fmt.Errorf("listing %s for %s: %w", k.plural, fs.JSON(), err))
				again = true
				continue
			}
			for _, r := range rs {
				if _, dup := found[r.id]; !dup {
					found[r.id] = r
					order = append(order, r.id)
				}
			}
		}
		for _, id := range order {
			r := found[id]
			label := shortID(r.id)
			if r.name != "" && r.name != r.id {
				label += " (" + r.name + ")"
			}
			if !lastPass && !r.created.IsZero() && r.created.After(threshold) {
				if o.verbose {
					logf("%s %s was created at %s, after this pass began: next pass", k.plural, label, r.created.Format(time.RFC3339))
				}
				again = true
				continue
			}
			err := k.remove(r)
			switch {
			case err == nil:
				removed++
				logf("removed %s %s", singular(k.plural), label)
			case statusOf(err) == http.StatusNotFound:
				if o.verbose {
					logf("%s %s already gone", singular(k.plural), label)
				}
			default:
				if o.verbose || lastPass {
					logf("removing %s %s failed: %v", singular(k.plural), label, err)
				}
				errs = append(errs, fmt.Errorf("removing %s %s: %w", singular(k.plural), label, err))
				again = true
			}
		}
		if !again || lastPass {
			return removed, errs
		}
		if o.verbose {
			logf("%s: pass %d left work (%d error(s)); next pass in %s", k.plural, pass+1, len(errs), o.retryInterval)
		}
		o.sleep(o.retryInterval)
	}
}

func singular(plural string) string { return strings.TrimSuffix(plural, "s") }

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 && containerIDRE.MatchString(id) {
		return id[:12]
	}
	return id
}

// prune removes containers, then networks, then volumes, then images; it returns false if
// something could not be removed.
func prune(ks []kind, sets []filterSet, o pruneOptions) bool {
	if len(sets) == 0 {
		logf("no filters were sent: nothing to remove")
		logf("removed 0 container(s), 0 network(s), 0 volume(s), 0 image(s)")
		return true
	}
	for _, fs := range sets {
		logf("deleting %s", fs.JSON())
	}
	counts := map[string]int{}
	ok := true
	for _, k := range ks {
		n, errs := pruneKind(k, sets, o)
		counts[k.plural] = n
		for _, err := range errs {
			ok = false
			logf("ERROR: %v", err)
		}
	}
	logf("removed %d container(s), %d network(s), %d volume(s), %d image(s)",
		counts["containers"], counts["networks"], counts["volumes"], counts["images"])
	return ok
}

// ---------------------------------------------------------------------------------------------
// main

func main() {
	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		logf("ERROR: %v", err)
		os.Exit(2)
	}
	d, err := newDockerClient(cfg.dockerHost, cfg.requestTimeout)
	if err != nil {
		logf("ERROR: %v", err)
		os.Exit(2)
	}
	engineVersion, err := d.ping()
	if err != nil {
		logf("ERROR: cannot reach the Docker engine at %s: %v", cfg.dockerHost, err)
		os.Exit(1)
	}
	d.version = cfg.apiVersion
	if d.version == "" {
		d.version = defaultAPIVersion
		if engineVersion != "" && olderAPIVersion(engineVersion, defaultAPIVersion) {
			d.version = engineVersion
		}
	}

	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.port))
	if err != nil {
		logf("ERROR: %v", err)
		os.Exit(1)
	}
	self := selfIdentity{ownContainerID()}
	logf("aikernel ryuk stand-in (not moby-ryuk): listening on %s, docker %s (API v%s, engine API %s), "+
		"connection_timeout=%s reconnection_timeout=%s request_timeout=%s shutdown_timeout=%s "+
		"remove_retries=%d retry_offset=%s changes_retry_interval=%s verbose=%t own_container=%s",
		ln.Addr(), cfg.dockerHost, d.version, engineVersion, cfg.connectionTimeout, cfg.reconnectionTimeout,
		cfg.requestTimeout, cfg.shutdownTimeout, cfg.removeRetries, cfg.retryOffset,
		cfg.changesRetryInterval, cfg.verbose, shortID(self.id))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	reg := newRegistry()
	events := make(chan event)
	go acceptLoop(ln, reg, events, cfg.verbose)
	logf("Started!")

	reason := run(cfg, ln, events, sigs)
	_ = ln.Close()
	logf("%s: pruning", reason)
	ok := prune(kinds(d, self), reg.snapshot(), pruneOptions{
		retries:       cfg.removeRetries,
		retryOffset:   cfg.retryOffset,
		retryInterval: cfg.changesRetryInterval,
		verbose:       cfg.verbose,
		sleep:         time.Sleep,
		now:           time.Now,
	})
	if !ok {
		logf("done, some resources could not be removed")
		os.Exit(1)
	}
	logf("done")
}

// run waits until it is time to prune and says why.
//
//   - No client within connectionTimeout: prune.
//   - Last client gone and none back within reconnectionTimeout: prune.
//   - SIGTERM/SIGINT: no new connections are accepted; prune as soon as no client is connected,
//     or after shutdownTimeout with the remaining connections ignored; a second signal prunes at
//     once.
func run(cfg config, ln net.Listener, events <-chan event, sigs <-chan os.Signal) string {
	clients := 0
	everConnected := false
	shuttingDown := false
	deadline := time.After(cfg.connectionTimeout)
	var shutdownDeadline <-chan time.Time
	for {
		select {
		case ev := <-events:
			switch ev.kind {
			case evConnected:
				clients++
				everConnected = true
				deadline = nil
				logf("client connected: %s (clients: %d)", ev.addr, clients)
				if ev.seen != nil {
					close(ev.seen)
				}
			case evDisconnected:
				clients--
				logf("client disconnected: %s (clients: %d)", ev.addr, clients)
				if clients == 0 {
					if shuttingDown {
						return "shutdown requested and all clients disconnected"
					}
					deadline = time.After(cfg.reconnectionTimeout)
				}
			}
		case <-deadline:
			if clients == 0 {
				if everConnected {
					return fmt.Sprintf("no client reconnected within %s", cfg.reconnectionTimeout)
				}
				return fmt.Sprintf("timed out waiting for a first connection (%s)", cfg.connectionTimeout)
			}
		case s := <-sigs:
			if shuttingDown {
				return fmt.Sprintf("second signal (%s)", s)
			}
			shuttingDown = true
			_ = ln.Close()
			if clients == 0 {
				return fmt.Sprintf("signal %s, no client connected", s)
			}
			logf("signal %s: shutdown requested; no new connections; waiting for %d client(s) to disconnect (at most %s)",
				s, clients, cfg.shutdownTimeout)
			deadline = nil
			shutdownDeadline = time.After(cfg.shutdownTimeout)
		case <-shutdownDeadline:
			return fmt.Sprintf("shutdown timeout (%s) passed, ignoring %d connected client(s)", cfg.shutdownTimeout, clients)
		}
	}
}
