package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// PeerFormatsFile: what gossip said survives a restart, a node that left
// for good is forgotten, and a damaged or oversized file is refused with
// what to do, before it is parsed whole.
func TestPeerFormatsFile(t *testing.T) {
	dir := t.TempDir()
	p, err := loadPeerFormats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.last("n2"); ok {
		t.Fatal("a new data dir remembers a format")
	}
	if err := p.record([]member{{ID: "n1", Reads: 5}, {ID: "n2", Reads: 4}, {ID: "n3"}}); err != nil {
		t.Fatal(err)
	}
	p, err = loadPeerFormats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := p.last("n2"); !ok || r != 4 {
		t.Fatalf("after a restart n2 reads %d (%v), want 4", r, ok)
	}
	if _, ok := p.last("n3"); ok {
		t.Fatal("a member gossip said nothing about is remembered")
	}
	if err := p.record([]member{{ID: "n2", Reads: 4, Status: statusLeft}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.last("n2"); ok {
		t.Fatal("a node that left is remembered")
	}
	if r, ok := p.last("n1"); !ok || r != 5 {
		t.Fatalf("n1 reads %d (%v), want 5 kept", r, ok)
	}
	path := filepath.Join(dir, PeerFormatsFile)
	for name, content := range map[string]string{
		"damaged":   `{"n1":`,
		"oversized": `{"n1":5,"` + strings.Repeat("x", maxPeerFormatsBytes) + `":4}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadPeerFormats(dir); err == nil || !strings.Contains(err.Error(), "Delete it") {
			t.Errorf("%s file: %v, want a refusal that says to delete it", name, err)
		}
	}
}
