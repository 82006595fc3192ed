package node_test

import (
	"log"
	"os"
	"testing"
)

// Importing node leaves the standard log package as Go sets it up: a
// dependency's init (capnslog, through raft-wal) rewired it, and an
// embedding program's own log lines changed format (new-user review).
func TestImportKeepsStandardLog(t *testing.T) {
	if log.Flags() != log.LstdFlags || log.Prefix() != "" || log.Writer() != os.Stderr {
		t.Errorf("log package after importing node: flags %d prefix %q writer %T", log.Flags(), log.Prefix(), log.Writer())
	}
}
