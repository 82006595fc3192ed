package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Subnet is the private range the harness uses inside its namespaces.
const Subnet = "10.77.0.0/24"

// HubIP is the harness's own address in the hub namespace.
const HubIP = "10.77.0.1"

// NodeIP returns the address of node i (1-based) in netns mode.
func NodeIP(i int) string { return "10.77.0." + strconv.Itoa(10+i) }

// Firewall names a way to cut traffic between nodes.
type Firewall string

// Firewalls, in order of preference.
const (
	FirewallNft      Firewall = "nft"
	FirewallIptables Firewall = "iptables"
	FirewallRoute    Firewall = "route" // blackhole routes, iproute2 only
)

// Capabilities says what this host lets the harness do.
type Capabilities struct {
	// Root: running as uid 0.
	Root bool
	// IP: iproute2's `ip` is installed and network namespaces work.
	IP bool
	// Firewall is the best way found to cut traffic ("" without IP).
	Firewall Firewall
	// Netns: nodes can run in network namespaces.
	Netns bool
	// Note explains what is missing, for the report.
	Note string
}

// Detect probes the host: root, `ip netns`, and a firewall tool. It
// creates and deletes one probe namespace of its own.
func Detect() Capabilities {
	var c Capabilities
	c.Root = os.Geteuid() == 0
	if !c.Root {
		c.Note = "not root: network namespaces and partitions need root; running nodes as loopback processes with process faults only (kill, pause, membership, clock drift)"
		return c
	}
	if _, err := exec.LookPath("ip"); err != nil {
		c.Note = "iproute2 (`ip`) not installed: running nodes as loopback processes with process faults only (kill, pause, membership, clock drift) (apt-get install iproute2)"
		return c
	}
	probe := "ljep-probe-" + randHex(3)
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		c.Note = fmt.Sprintf("`ip netns add` failed (%v: %s): running nodes as loopback processes with process faults only (kill, pause, membership, clock drift)", err, strings.TrimSpace(string(out)))
		return c
	}
	defer exec.Command("ip", "netns", "del", probe).Run()
	c.IP, c.Netns = true, true
	switch {
	case works("ip", "netns", "exec", probe, "nft", "list", "ruleset"):
		c.Firewall = FirewallNft
	case works("ip", "netns", "exec", probe, "iptables", "-w", "-L", "INPUT", "-n"):
		c.Firewall = FirewallIptables
		c.Note = "nft not installed: partitions use iptables (apt-get install nftables to prefer nft)"
	default:
		c.Firewall = FirewallRoute
		c.Note = "neither nft nor iptables installed: partitions use blackhole routes (apt-get install nftables)"
	}
	return c
}

func works(name string, args ...string) bool {
	return exec.Command(name, args...).Run() == nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Network is the set of namespaces of one campaign: a hub holding the
// bridge (and the harness's clients) and one namespace per node.
type Network struct {
	// RunID makes the names unique to this campaign.
	RunID string `json:"run_id"`
	// Hub is the hub namespace's name.
	Hub string `json:"hub"`
	// Nodes are the node namespaces' names, node i at index i-1.
	Nodes []string `json:"nodes"`
	// Firewall is how partitions are made.
	Firewall Firewall `json:"firewall"`

	mu      sync.Mutex
	blocked map[int]map[int]bool // to node → from nodes whose packets it drops
}

// NewRunID returns a short random campaign id.
func NewRunID() string { return randHex(3) }

// CreateNetwork creates the hub and n node namespaces with their bridge,
// veths and addresses. On error it removes what it created.
func CreateNetwork(ctx context.Context, runID string, n int, fw Firewall) (*Network, error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("network: %d nodes (1..200)", n)
	}
	nw := &Network{RunID: runID, Hub: "ljep-" + runID + "-hub", Firewall: fw}
	for i := 1; i <= n; i++ {
		nw.Nodes = append(nw.Nodes, fmt.Sprintf("ljep-%s-n%d", runID, i))
	}
	steps := [][]string{
		{"netns", "add", nw.Hub},
		{"-n", nw.Hub, "link", "set", "lo", "up"},
		{"-n", nw.Hub, "link", "add", "br0", "type", "bridge"},
		{"-n", nw.Hub, "addr", "add", HubIP + "/24", "dev", "br0"},
		{"-n", nw.Hub, "link", "set", "br0", "up"},
	}
	for i, ns := range nw.Nodes {
		veth := fmt.Sprintf("v%d", i+1)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", nw.Hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", nw.Hub, "link", "set", veth, "master", "br0"},
			[]string{"-n", nw.Hub, "link", "set", veth, "up"},
			[]string{"-n", ns, "addr", "add", NodeIP(i+1) + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			nw.Destroy()
			return nil, err
		}
	}
	return nw, nil
}

func ipCmd(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Destroy kills every process still inside the campaign's namespaces and
// deletes the namespaces (which removes their veths, bridge and rules).
// It is idempotent and never touches other namespaces.
func (nw *Network) Destroy() error {
	return nw.destroy(append(append([]string(nil), nw.Nodes...), nw.Hub))
}

func (nw *Network) destroy(all []string) error {
	var errs []error
	for _, ns := range all {
		if !nsExists(ns) {
			continue
		}
		for _, pid := range nsPids(ns) {
			if pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, ns := range all {
		if !nsExists(ns) {
			continue
		}
		var err error
		for try := 0; try < 20; try++ {
			if err = ipCmd(context.Background(), "netns", "del", ns); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CleanupStale deletes every namespace named like the harness's (ljep-*)
// and kills the processes inside: what a campaign killed with SIGKILL
// leaves behind. Run it only when no campaign is running. It returns the
// namespaces deleted.
func CleanupStale() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "ljep-") {
			names = append(names, e.Name())
		}
	}
	nw := &Network{Nodes: names}
	return names, nw.destroy(names)
}

func nsExists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

func nsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Env is the environment variable carrying a Network to the re-executed
// harness inside the hub.
const Env = "LEASENODE_JEPSEN_NETWORK"

// Encode serializes the network for Env.
func (nw *Network) Encode() string {
	b, _ := json.Marshal(nw)
	return string(b)
}

// DecodeNetwork parses Env's value.
func DecodeNetwork(s string) (*Network, error) {
	var nw Network
	if err := json.Unmarshal([]byte(s), &nw); err != nil {
		return nil, fmt.Errorf("%s: %w", Env, err)
	}
	return &nw, nil
}

// InHub reports whether this process runs inside nw's hub namespace (its
// bridge address is local).
func (nw *Network) InHub() bool {
	out, err := exec.Command("ip", "-o", "addr", "show", "dev", "br0").Output()
	return err == nil && bytes.Contains(out, []byte(" "+HubIP+"/24"))
}

// Block makes node to (1-based) drop every packet from node from. Blocks
// accumulate until Heal.
func (nw *Network) Block(ctx context.Context, from, to int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.blocked == nil {
		nw.blocked = map[int]map[int]bool{}
	}
	if nw.blocked[to] == nil {
		nw.blocked[to] = map[int]bool{}
	}
	nw.blocked[to][from] = true
	if nw.Firewall == FirewallRoute {
		return nw.applyRoutes(ctx, from)
	}
	return nw.apply(ctx, to)
}

// Heal removes every block.
func (nw *Network) Heal(ctx context.Context) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	old := nw.blocked
	nw.blocked = nil
	var errs []error
	for i := range nw.Nodes {
		node := i + 1
		if nw.Firewall == FirewallRoute {
			if err := nw.applyRoutes(ctx, node); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if len(old[node]) == 0 {
			continue
		}
		if err := nw.apply(ctx, node); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Blocked returns the current blocks as "from->to" pairs (for logs).
func (nw *Network) Blocked() []string {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var out []string
	for to, froms := range nw.blocked {
		for from := range froms {
			out = append(out, fmt.Sprintf("n%d->n%d", from, to))
		}
	}
	sort.Strings(out)
	return out
}

func (nw *Network) sources(to int) []string {
	var ips []string
	for from := range nw.blocked[to] {
		ips = append(ips, NodeIP(from))
	}
	sort.Strings(ips)
	return ips
}

// apply rewrites node to's input filter from nw.blocked. Callers hold mu.
func (nw *Network) apply(ctx context.Context, to int) error {
	ns := nw.Nodes[to-1]
	srcs := nw.sources(to)
	switch nw.Firewall {
	case FirewallNft:
		var b strings.Builder
		b.WriteString("table inet jepsen\ndelete table inet jepsen\n")
		if len(srcs) > 0 {
			fmt.Fprintf(&b, "table inet jepsen {\n chain input {\n  type filter hook input priority -10; policy accept;\n  ip saddr { %s } drop\n }\n}\n", strings.Join(srcs, ", "))
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(b.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
		}
		return nil
	case FirewallIptables:
		if err := ipCmd(ctx, "netns", "exec", ns, "iptables", "-w", "-F", "INPUT"); err != nil {
			return err
		}
		for _, s := range srcs {
			if err := ipCmd(ctx, "netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-s", s, "-j", "DROP"); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("no firewall to partition with")
}

// applyRoutes rewrites node from's blackhole routes: one per node that
// drops from's packets (so from cannot send to it). Callers hold mu.
func (nw *Network) applyRoutes(ctx context.Context, from int) error {
	ns := nw.Nodes[from-1]
	// Remove every blackhole we may have added, then add the current ones.
	for i := range nw.Nodes {
		exec.CommandContext(ctx, "ip", "-n", ns, "route", "del", "blackhole", NodeIP(i+1)+"/32").Run()
	}
	for to, froms := range nw.blocked {
		if froms[from] {
			if err := ipCmd(ctx, "-n", ns, "route", "add", "blackhole", NodeIP(to)+"/32"); err != nil {
				return err
			}
		}
	}
	return nil
}
