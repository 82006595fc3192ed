package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "leasenode-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "leasenode")
	build := exec.Command("go", "build", "-o", binary, "./cmd/leasenode")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build leasenode: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// manifests are the objects of kubernetes/leasenode.yaml, decoded
// strictly into the Kubernetes API types.
type manifests struct {
	headless, api *corev1.Service
	sts           *appsv1.StatefulSet
	pdb           *policyv1.PodDisruptionBudget
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	data, err := os.ReadFile("kubernetes/leasenode.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "v1 Service":
			obj = &corev1.Service{}
		case "apps/v1 StatefulSet":
			m.sts = &appsv1.StatefulSet{}
			obj = m.sts
		case "policy/v1 PodDisruptionBudget":
			m.pdb = &policyv1.PodDisruptionBudget{}
			obj = m.pdb
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		// Strict: an unknown or misspelt field, or a value of the wrong
		// type, is an error (what the API server's validation refuses).
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
		if s, ok := obj.(*corev1.Service); ok {
			if s.Spec.ClusterIP == corev1.ClusterIPNone {
				m.headless = s
			} else {
				m.api = s
			}
		}
	}
	return m
}

func checkComplete(t *testing.T, m manifests) {
	t.Helper()
	if m.headless == nil || m.api == nil || m.sts == nil || m.pdb == nil {
		t.Fatalf("want a headless Service, an API Service, a StatefulSet and a PodDisruptionBudget; got %+v", m)
	}
}

// The manifests are valid Kubernetes objects that refer to each other
// correctly.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	checkComplete(t, m)
	sts, pod := m.sts, m.sts.Spec.Template.Spec
	podLabels := labels.Set(m.sts.Spec.Template.Labels)
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, args...)
		}
	}
	check(m.headless.Spec.ClusterIP == corev1.ClusterIPNone && m.headless.Spec.PublishNotReadyAddresses,
		"the peer Service must be headless and publish not-ready pods (they find each other before they are ready)")
	check(sts.Spec.ServiceName == m.headless.Name, "StatefulSet serviceName %q, want the headless Service %q", sts.Spec.ServiceName, m.headless.Name)
	check(sts.Spec.PodManagementPolicy == appsv1.ParallelPodManagement, "pods must start in parallel to bootstrap together")
	check(sts.Spec.Replicas != nil && *sts.Spec.Replicas == 3, "3 replicas")
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	check(err == nil && sel.Matches(podLabels), "StatefulSet selector %v does not match the pod labels %v", sts.Spec.Selector, podLabels)
	for _, s := range []*corev1.Service{m.headless, m.api} {
		check(labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels), "Service %s selects %v, not the pods", s.Name, s.Spec.Selector)
	}
	pdbSel, err := metav1.LabelSelectorAsSelector(m.pdb.Spec.Selector)
	check(err == nil && pdbSel.Matches(podLabels), "PodDisruptionBudget selector does not match the pods")
	check(m.pdb.Spec.MaxUnavailable != nil && m.pdb.Spec.MaxUnavailable.IntValue() == 1, "PodDisruptionBudget: at most 1 unavailable")

	check(len(pod.Containers) == 1, "one container")
	c := pod.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, s := range []*corev1.Service{m.headless, m.api} {
		for _, p := range s.Spec.Ports {
			if p.TargetPort.StrVal != "" {
				_, ok := ports[p.TargetPort.StrVal]
				check(ok, "Service %s targets port %q, which the container does not name", s.Name, p.TargetPort.StrVal)
			}
		}
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet", name)
			continue
		}
		_, ok := ports[p.HTTPGet.Port.StrVal]
		check(ok, "%s probe port %q is not a container port", name, p.HTTPGet.Port.StrVal)
	}
	check(c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet.Path == "/readyz", "readiness on /readyz")
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, pvc := range sts.Spec.VolumeClaimTemplates {
		volumes[pvc.Name] = corev1.Volume{Name: pvc.Name}
	}
	for _, vm := range c.VolumeMounts {
		_, ok := volumes[vm.Name]
		check(ok, "volumeMount %q has no volume", vm.Name)
	}
	secrets := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			secrets[v.Secret.SecretName] = true
		}
	}
	check(secrets["leasenode-cluster-key"] && secrets["leasenode-tls"], "the cluster key and TLS come from Secrets: %v", secrets)
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	for _, a := range c.Args {
		for _, ref := range regexp.MustCompile(`\$\((\w+)\)`).FindAllStringSubmatch(a, -1) {
			check(env[ref[1]], "arg %q uses $(%s), which env does not define (Kubernetes would leave it as is)", a, ref[1])
		}
	}
	psc, csc := pod.SecurityContext, c.SecurityContext
	check(psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot, "runAsNonRoot")
	check(csc != nil && csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem &&
		csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation, "read-only root, no privilege escalation")
}

// ports of one simulated pod or host, on 127.0.0.1.
type nodePorts struct{ raft, gossip, api, http int }

func (p nodePorts) byManifest(port string) int {
	switch port {
	case "7400":
		return p.raft
	case "7401":
		return p.gossip
	case "7402":
		return p.api
	case "7403":
		return p.http
	}
	return -1
}

func freePorts(t *testing.T, n int) []nodePorts {
	t.Helper()
	var out []nodePorts
	var lns []io.Closer
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	next := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, l)
		port := l.Addr().(*net.TCPAddr).Port
		// Gossip also listens on UDP.
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			lns = append(lns, u)
		}
		return port
	}
	for range n {
		out = append(out, nodePorts{next(), next(), next(), next()})
	}
	return out
}

// proc is an agent process.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (p *proc) out() (string, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.stderr.String()
}

func start(t *testing.T, env, args []string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{})}
	var clean []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LEASENODE_") {
			clean = append(clean, e)
		}
	}
	p.cmd.Env = append(clean, env...)
	p.cmd.Stdout = lockedWriter{&p.mu, &p.stdout}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.stderr}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			_, e := p.out()
			t.Logf("%v stderr:\n%s", args, tail(e))
		}
	})
	return p
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

// eventually retries f until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for an outcome
	}
}

func httpStatus(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func cli(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

func newClusterKey(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dockerfileEnv returns the ENV of docker/Dockerfile as NAME=VALUE.
func dockerfileEnv(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var env []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == "ENV" {
			env = append(env, f[1:]...)
		}
	}
	if len(env) == 0 {
		t.Fatal("no ENV in the Dockerfile")
	}
	return env
}

// The StatefulSet's agent: three agents started with exactly the
// container's args (and the image's ENV), Kubernetes' $(VAR) expansion
// done as the kubelet would (POD_NAME leasenode-N, POD_NAMESPACE default,
// POD_IP 127.0.0.1), each pod's ports mapped to free loopback ports, the
// pod DNS names to localhost, the --join Service name to the three gossip
// addresses (a name resolving to several addresses is tested by
// docker/smoke.sh), and the Secrets' mount paths to files made by
// `leasenode tls` and a fresh cluster key. They form a cluster, answer
// the readiness probe, and a client with an API certificate reaches the
// leader through a follower's redirect to its advertised name.
func TestKubernetesAgentsStart(t *testing.T) {
	m := loadManifests(t)
	checkComplete(t, m)
	c := m.sts.Spec.Template.Spec.Containers[0]
	dir := t.TempDir()
	tlsDir, keyDir := filepath.Join(dir, "tls"), filepath.Join(dir, "cluster-key")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	newClusterKey(t, filepath.Join(keyDir, "cluster.key"))
	if code, out := cli(t, "tls", "ca", "create", "--dir", tlsDir); code != 0 {
		t.Fatal(out)
	}
	const n = 3
	ports := freePorts(t, n)
	for i := range n {
		name := "leasenode-" + strconv.Itoa(i)
		if code, out := cli(t, "tls", "cert", "create", "--dir", tlsDir, "--node", name, "--ip", "127.0.0.1",
			"--dns", "localhost,"+name+".leasenode.default.svc.cluster.local"); code != 0 {
			t.Fatal(out)
		}
	}
	if code, out := cli(t, "tls", "cert", "create", "--dir", tlsDir, "--client", "--name", "ops"); code != 0 {
		t.Fatal(out)
	}
	var gossips []string
	for _, p := range ports {
		gossips = append(gossips, "127.0.0.1:"+strconv.Itoa(p.gossip))
	}
	hostPort := regexp.MustCompile(`^([^:=]+):(74\d\d)$`)
	for i := range n {
		pod := "leasenode-" + strconv.Itoa(i)
		data := filepath.Join(dir, pod)
		expand := strings.NewReplacer("$(POD_NAME)", pod, "$(POD_NAMESPACE)", "default", "$(POD_IP)", "127.0.0.1")
		args := []string{binary}
		for _, a := range c.Args {
			a = expand.Replace(a)
			flag, val, _ := strings.Cut(a, "=")
			switch {
			case flag == "--join":
				val = strings.Join(gossips, ",")
			case strings.HasPrefix(val, "/data"):
				val = data + strings.TrimPrefix(val, "/data")
			case strings.HasPrefix(val, "/etc/leasenode/tls/"):
				val = filepath.Join(tlsDir, strings.TrimPrefix(val, "/etc/leasenode/tls/"))
			case strings.HasPrefix(val, "/etc/leasenode/cluster-key/"):
				val = filepath.Join(keyDir, strings.TrimPrefix(val, "/etc/leasenode/cluster-key/"))
			default:
				if hp := hostPort.FindStringSubmatch(val); hp != nil {
					host := hp[1]
					switch host {
					case "0.0.0.0", "127.0.0.1":
						host = "127.0.0.1"
					case pod + ".leasenode.default.svc.cluster.local":
						host = "localhost"
					default:
						t.Fatalf("%s: address %q: unknown host", a, val)
					}
					val = host + ":" + strconv.Itoa(ports[i].byManifest(hp[2]))
				}
			}
			if val != "" {
				a = flag + "=" + val
			}
			args = append(args, a)
		}
		var env []string
		for _, e := range dockerfileEnv(t) {
			if strings.HasPrefix(e, "LEASENODE_DATA_DIR=") {
				e = "LEASENODE_DATA_DIR=" + data
			}
			env = append(env, e)
		}
		t.Logf("%s: %s", pod, strings.Join(args[1:], " "))
		start(t, env, args)
	}
	for i, p := range ports {
		eventually(t, 60*time.Second, func() error {
			// The readinessProbe: GET /readyz on the http port.
			if code, body := httpStatus(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.http)); code != 200 {
				return fmt.Errorf("leasenode-%d /readyz: %d %s", i, code, body)
			}
			return nil
		})
	}
	client := []string{"--tls-ca", filepath.Join(tlsDir, "leasenode-ca.pem"),
		"--tls-cert", filepath.Join(tlsDir, "client-ops.pem"), "--tls-key", filepath.Join(tlsDir, "client-ops-key.pem")}
	var status string
	eventually(t, 30*time.Second, func() error {
		code, out := cli(t, append([]string{"status", "--addr", fmt.Sprintf("localhost:%d", ports[0].api)}, client...)...)
		status = out
		if code != 0 || strings.Count(out, "leasenode-") < 3 || !strings.Contains(out, "(serving)") ||
			strings.Contains(out, "no confirmed") || strings.Contains(out, "unreachable") {
			return fmt.Errorf("status: %d %s", code, out)
		}
		return nil
	})
	t.Logf("status:\n%s", status)
	// Acquire through every node: followers send the client to the
	// leader's advertised DNS name, which its certificate carries.
	for i, p := range ports {
		key := "k8s/" + strconv.Itoa(i)
		code, out := cli(t, append([]string{"acquire", key, "--ttl", "30s", "--addr", fmt.Sprintf("localhost:%d", p.api)}, client...)...)
		if code != 0 || !strings.Contains(out, key) {
			t.Errorf("acquire through leasenode-%d: %d %s", i, code, out)
		}
	}
}

// unitService returns the [Service] settings of systemd/leasenode.service,
// by key, in order.
func unitService(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("systemd/leasenode.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %q", line)
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

// The systemd unit: three agents started with exactly its ExecStart and
// Environment, systemd's specifiers resolved as systemd would (%S the
// state root, %d the credentials directory holding the LoadCredential
// file), each reading a copy of systemd/agent.toml whose example
// addresses 10.0.0.1-3 are mapped to loopback ports (10.0.0.1 is the node
// itself). They form a cluster and answer /readyz on their http address.
// The hardening itself is checked by systemd-analyze in .ci/run.
func TestSystemdUnitAgentsStart(t *testing.T) {
	unit := unitService(t)
	for _, k := range []string{"DynamicUser", "NoNewPrivileges", "ProtectSystem", "StateDirectory", "LoadCredential", "ExecStart"} {
		if len(unit[k]) == 0 {
			t.Fatalf("the unit has no %s", k)
		}
	}
	if unit["ProtectSystem"][0] != "strict" || unit["DynamicUser"][0] != "yes" {
		t.Errorf("ProtectSystem=%v DynamicUser=%v", unit["ProtectSystem"], unit["DynamicUser"])
	}
	example, err := os.ReadFile("systemd/agent.toml")
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	ports := freePorts(t, n)
	dir := t.TempDir()
	key := filepath.Join(dir, "etc", "cluster.key")
	newClusterKey(t, key)
	for i := range n {
		node := filepath.Join(dir, "n"+strconv.Itoa(i+1))
		stateRoot, creds := filepath.Join(node, "state"), filepath.Join(node, "credentials")
		// LoadCredential=ID:PATH puts a copy of PATH at %d/ID.
		for _, lc := range unit["LoadCredential"] {
			id, _, _ := strings.Cut(lc, ":")
			b, err := os.ReadFile(key)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(creds, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(creds, id), b, 0o400); err != nil {
				t.Fatal(err)
			}
		}
		// StateDirectory=leasenode: systemd makes %S/leasenode.
		if err := os.MkdirAll(filepath.Join(stateRoot, unit["StateDirectory"][0]), 0o700); err != nil {
			t.Fatal(err)
		}
		// The example config, as node i: 10.0.0.1 is itself, 10.0.0.2
		// and 10.0.0.3 the two others in turn.
		others := []int{}
		for j := range n {
			if j != i {
				others = append(others, j)
			}
		}
		conf := regexp.MustCompile(`10\.0\.0\.([123]):(74\d\d)`).ReplaceAllStringFunc(string(example), func(s string) string {
			host, port, _ := strings.Cut(s, ":")
			j := i
			if host != "10.0.0.1" {
				j = others[int(host[len(host)-1]-'2')]
			}
			return "127.0.0.1:" + strconv.Itoa(ports[j].byManifest(port))
		})
		conf = strings.Replace(conf, `id = "n1"`, fmt.Sprintf(`id = "n%d"`, i+1), 1)
		confPath := filepath.Join(node, "agent.toml")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		spec := strings.NewReplacer("%S", stateRoot, "%d", creds)
		var env []string
		for _, e := range unit["Environment"] {
			env = append(env, spec.Replace(e))
		}
		exec := strings.Fields(unit["ExecStart"][0])
		args := []string{binary}
		for _, a := range exec[1:] {
			if a == "/etc/leasenode/agent.toml" {
				a = confPath
			}
			args = append(args, spec.Replace(a))
		}
		t.Logf("n%d: %v %v", i+1, env, args[1:])
		start(t, env, args)
	}
	for i, p := range ports {
		eventually(t, 60*time.Second, func() error {
			if code, body := httpStatus(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.http)); code != 200 {
				return fmt.Errorf("n%d /readyz: %d %s", i+1, code, body)
			}
			return nil
		})
	}
	// Ready agents; n2 lists the leader as serving once it has confirmed
	// the leader's client API (gossip, then a check about every second).
	eventually(t, 30*time.Second, func() error {
		if code, out := cli(t, "status", "--addr", fmt.Sprintf("127.0.0.1:%d", ports[1].api)); code != 0 || strings.Count(out, "(serving)") != 1 {
			return fmt.Errorf("status: %d %s", code, out)
		}
		return nil
	})
	// Its data went where StateDirectory says.
	// A new data dir holds a raft-wal store (wal/); one made by an older
	// release holds raft.db. Either shows the agent wrote there.
	state := filepath.Join(dir, "n1", "state", "leasenode")
	_, walErr := os.Stat(filepath.Join(state, "wal", "wal-meta.db"))
	_, boltErr := os.Stat(filepath.Join(state, "raft.db"))
	if walErr != nil && boltErr != nil {
		t.Errorf("no Raft log store in the state directory %s: %v; %v", state, walErr, boltErr)
	}
}
