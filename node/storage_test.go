package node

import (
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
)

// A raft-wal store whose tail Raft truncated (a follower dropping entries
// a new leader does not have: routine after an election) opens again with
// every entry before the cut readable. raft-wal v0.4.0 sealed such a
// segment without its index block, and the node never started again
// ("sealed segment has no index block"); a 2-minute campaign hit it.
func TestWALReopensAfterTailTruncation(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	s, err := openWAL(dir, false, log)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 10; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte{byte(i)}})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(8, 10); err != nil { // conflict: drop the tail
		t.Fatal(err)
	}
	if err := s.StoreLogs([]*raft.Log{{Index: 8, Term: 2, Type: raft.LogCommand, Data: []byte{80}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = openWAL(dir, false, log)
	if err != nil {
		t.Fatalf("reopen after a tail truncation: %v", err)
	}
	defer s.Close()
	for i := uint64(1); i <= 8; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d after reopening: %v", i, err)
		}
	}
	if last, _ := s.LastIndex(); last != 8 {
		t.Fatalf("last index %d, want 8", last)
	}
}
