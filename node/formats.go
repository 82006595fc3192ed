package node

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
)

// PeerFormatsFile, in the data dir, remembers the newest command format
// each node of the cluster said in gossip that it reads, so that a node
// that restarts and becomes leader still knows what a server reads that
// has been down since before the restart (its gossip never saw it):
// formatGate and keepLockDelay ask it for servers gossip does not know.
const PeerFormatsFile = "peer-formats"

// maxPeerFormatsBytes bounds PeerFormatsFile, read before it is parsed: a
// few hundred nodes' entries.
const maxPeerFormatsBytes = 64 << 10

// peerFormats is the last format each node was seen to read, as kept in
// PeerFormatsFile.
type peerFormats struct {
	dir string
	mu  sync.Mutex
	m   map[string]byte
}

// loadPeerFormats reads PeerFormatsFile of dir (none yet: empty).
func loadPeerFormats(dir string) (*peerFormats, error) {
	p := &peerFormats{dir: dir, m: map[string]byte{}}
	if err := readJSONFile(dir, PeerFormatsFile, maxPeerFormatsBytes, &p.m,
		"it only remembers which command format each node reads; gossip tells again"); err != nil {
		return nil, err
	}
	return p, nil
}

// last returns the format node id was last seen to read.
func (p *peerFormats) last(id string) (byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.m[id]
	return r, ok
}

// record keeps what members read (a node that left for good is
// forgotten) and writes the file if that changed.
func (p *peerFormats) record(members []member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := maps.Clone(p.m)
	for _, m := range members {
		switch {
		case m.Status == statusLeft:
			delete(next, m.ID)
		case m.Reads != 0:
			next[m.ID] = m.Reads
		}
	}
	if maps.Equal(next, p.m) {
		return nil
	}
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if err := writeIDFile(p.dir, PeerFormatsFile, string(b)); err != nil {
		return fmt.Errorf("write %s: %w", PeerFormatsFile, err)
	}
	p.m = next
	return nil
}
