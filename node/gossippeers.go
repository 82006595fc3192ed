package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// GossipPeersFile, in the data dir, remembers the gossip address of each
// member this node has seen (those that left for good aside), so that a
// node that restarts while its --join seeds are down joins the others
// itself, as Consul's agents do from Serf's snapshot (rejoin). Its
// member table is empty after a restart, and the others, to which it
// answers probes at the same address under the same name as before,
// never call it failed and so never rejoin it: it learnt of them only
// from one of their periodic full syncs (push/pull, every 15-30 s, each
// to a random member). A node waiting to bootstrap that restarted beside
// a down seed waited 35-47 s so beside two busy loops (3 of 6 runs),
// past 60 s once in CI (TestBootstrapBesideADownRestoredNode). Guarded
// by TestRestartedNodeFindsPeersPastDownSeeds.
const GossipPeersFile = "gossip-peers"

// maxGossipPeersBytes bounds GossipPeersFile, read before it is parsed: a
// few hundred nodes' entries.
const maxGossipPeersBytes = 64 << 10

// gossipPeers is the gossip address of each member last seen, by node ID,
// as kept in GossipPeersFile.
type gossipPeers struct {
	dir string
	mu  sync.Mutex
	m   map[string]string
}

// loadGossipPeers reads GossipPeersFile of dir (none yet: empty).
func loadGossipPeers(dir string) (*gossipPeers, error) {
	p := &gossipPeers{dir: dir, m: map[string]string{}}
	if err := readJSONFile(dir, GossipPeersFile, maxGossipPeersBytes, &p.m,
		"it only remembers the other nodes' gossip addresses; --join and gossip tell again"); err != nil {
		return nil, err
	}
	return p, nil
}

// addrs returns the remembered gossip addresses, sorted.
func (p *gossipPeers) addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Sorted(maps.Values(p.m))
	return slices.Compact(out)
}

// record keeps the gossip address of every member but self (a node that
// left for good is forgotten) and writes the file if that changed.
func (p *gossipPeers) record(self string, members []member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := maps.Clone(p.m)
	for _, m := range members {
		switch {
		case m.ID == self:
		case m.Status == statusLeft:
			delete(next, m.ID)
		case m.Gossip != "":
			next[m.ID] = m.Gossip
		}
	}
	if maps.Equal(next, p.m) {
		return nil
	}
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if err := writeIDFile(p.dir, GossipPeersFile, string(b)); err != nil {
		return fmt.Errorf("write %s: %w", GossipPeersFile, err)
	}
	p.m = next
	return nil
}

// readJSONFile decodes the JSON file name of dir, of at most limit bytes,
// into v; a missing file leaves v as it is. A file too large or not
// JSON is reported as damaged, with what deleting it costs (forget).
func readJSONFile(dir, name string, limit int64, v any, forget string) error {
	f, err := os.Open(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("data dir %s: %s is over %d bytes: damaged? Delete it (%s)", dir, name, limit, forget)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("data dir %s: %s: %v: damaged? Delete it (%s)", dir, name, err, forget)
	}
	return nil
}
