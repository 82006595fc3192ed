package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/internal/freeport"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// crashChildEnv makes the test binary run crashChild instead of tests.
const crashChildEnv = "LEASENODE_CRASH_CHILD"

// crashConfig is the one-node cluster that TestKill9MidWrite kills: a
// child process and the parent's checks open the same data dir with the
// same addresses.
func crashConfig(dir, bind, gossip string) node.Config {
	cfg := node.DefaultConfig()
	cfg.ID, cfg.DataDir = "crash", dir
	cfg.BindAddr, cfg.GossipAddr = bind, gossip
	cfg.BootstrapExpect, cfg.Voters = 1, 1
	cfg.Timing = nodetest.TestTiming
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// TestCrashChild is the process TestKill9MidWrite kills: a one-node
// cluster whose 8 writers acquire new keys back to back and print each
// grant ("ok KEY TOKEN") once it is acknowledged, until they are killed.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashChildEnv)
	if spec == "" {
		t.Skip("the child of TestKill9MidWrite")
	}
	f := strings.Split(spec, ",")
	n, err := node.Start(context.Background(), crashConfig(f[0], f[1], f[2]))
	if err != nil {
		fmt.Printf("start: %v\n", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	for w := range 8 {
		go func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("%s/%d/%d", f[3], w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := n.Acquire(ctx, &pb.AcquireRequest{Key: key, Holder: "h" + f[3], RequestId: uint64(w*1_000_000 + i + 1), Ttl: durationpb.New(time.Hour)})
				cancel()
				if err != nil || !r.Granted {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "ok %s %d\n", key, r.Token)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// Invariant no-lost-commit: a node killed with SIGKILL in the middle of
// appending to its raft-wal log, any number of times, comes back with
// every entry it acknowledged, and a torn tail (the bytes of an append
// that never completed: half an entry, or a batch whose commit frame's
// checksum does not match) is dropped by raft-wal's recovery instead of
// stopping the node or being applied. Each round runs a child process that
// acquires keys with 8 writers (so appends are group commits of several
// entries), kills it at a random moment, writes a torn append after the
// last complete frame of the tail segment, restarts the node here and
// checks every acknowledged grant. The jepsen campaigns (kill -9 of agent
// processes under load) exercise the same recovery with a 3-node cluster.
func TestKill9MidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	bind, err := freeport.Addr("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	gossip, err := freeport.Addr("127.0.0.1", true)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]uint64{}
	rounds := 8
	for round := range rounds {
		lines := runAndKill(t, dir, bind, gossip, round)
		for _, l := range lines {
			var key string
			var token uint64
			if _, err := fmt.Sscanf(l, "ok %s %d", &key, &token); err != nil {
				t.Fatalf("child said %q", l)
			}
			acked[key] = token
		}
		tornTail(t, filepath.Join(dir, "wal"), round)

		cfg := crashConfig(dir, bind, gossip)
		var n *node.Node
		nodetest.Eventually(t, 10*time.Second, func() error {
			n, err = node.Start(context.Background(), cfg)
			return err // the killed child's ports may linger briefly
		})
		nodetest.Eventually(t, 15*time.Second, func() error {
			if !n.IsLeader() {
				return errors.New("not leading yet")
			}
			return nil
		})
		for key, token := range acked {
			r, ok := n.FSM().Get(key)
			if !ok || r.Token != token {
				n.Crash()
				t.Fatalf("round %d: acknowledged grant %s token %d lost after kill -9 and a torn tail (have %+v, %v)", round, key, token, r, ok)
			}
		}
		// The recovered log takes new appends.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := n.Acquire(ctx, &pb.AcquireRequest{Key: fmt.Sprintf("parent/%d", round), Holder: "parent", RequestId: uint64(round + 1), Ttl: durationpb.New(time.Hour)})
		cancel()
		if err != nil || !r.Granted {
			n.Crash()
			t.Fatalf("round %d: acquire after recovery: %v %v", round, r, err)
		}
		acked[fmt.Sprintf("parent/%d", round)] = r.Token
		n.Crash()
		<-n.Done()
		t.Logf("round %d: %d grants acknowledged by the killed child, %d in all", round, len(lines), len(acked))
	}
}

// runAndKill runs the child on dir until it has acknowledged some grants,
// then after a random pause kills it with SIGKILL, and returns its lines.
func runAndKill(t *testing.T, dir, bind, gossip string, round int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+strings.Join([]string{dir, bind, gossip, "r" + strconv.Itoa(round)}, ","))
	cmd.Stderr = io.Discard
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		lines []string
		other []string // what else the child said
		first = make(chan struct{})
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			l := sc.Text()
			if !strings.HasPrefix(l, "ok ") {
				mu.Lock()
				other = append(other, l)
				mu.Unlock()
				continue
			}
			mu.Lock()
			lines = append(lines, l)
			mu.Unlock()
			once.Do(func() { close(first) })
		}
	}()
	select {
	case <-first:
	case <-done:
		cmd.Wait()
		t.Fatalf("round %d: the child stopped before any grant: %q", round, other)
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("round %d: no grant from the child in 30 s", round)
	}
	time.Sleep(time.Duration(20+rand.IntN(300)) * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	return lines
}

// tornTail writes what a crash in the middle of an append can leave after
// the last complete frame of the newest segment in walDir: half of an
// entry frame (even rounds), or a whole entry frame followed by a commit
// frame whose checksum is wrong (odd rounds; the entry's bytes made it
// but not all of the batch). Neither was ever acknowledged.
func tornTail(t *testing.T, walDir string, round int) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(walDir, "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no wal segment in %s: %v", walDir, err)
	}
	path := segs[len(segs)-1] // names sort by base index
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	end := frameEnd(t, f)
	payload := make([]byte, 200)
	for i := range payload {
		// Not a frame type: where later appends leave some of these
		// bytes behind, recovery reads them as the end of the frames.
		payload[i] = 0x80 | byte(rand.Uint32())
	}
	var torn []byte
	entry := make([]byte, 8)
	entry[0] = 1 // FrameEntry
	binary.LittleEndian.PutUint32(entry[4:], uint32(len(payload)))
	if round%2 == 0 {
		torn = append(entry, payload[:len(payload)/2]...)
	} else {
		commit := make([]byte, 8)
		commit[0] = 3 // FrameCommit, with a checksum that cannot match
		binary.LittleEndian.PutUint32(commit[4:], rand.Uint32())
		torn = append(append(entry, payload...), commit...)
	}
	if _, err := f.WriteAt(torn, end); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// frameEnd walks the frames of a raft-wal segment (a 32-byte file header,
// then frames of an 8-byte header: type, 3 reserved bytes, length or, for
// a commit, a checksum; payloads padded to 8 bytes) as raft-wal's recovery
// does, and returns the offset just after the last commit frame: what
// follows it was never acknowledged.
func frameEnd(t *testing.T, f *os.File) int64 {
	t.Helper()
	off, end := int64(32), int64(32)
	h := make([]byte, 8)
	for {
		if _, err := f.ReadAt(h, off); err != nil {
			return end
		}
		switch h[0] {
		case 1, 2: // entry, index
			n := int64(binary.LittleEndian.Uint32(h[4:]))
			off += 8 + n + (8-n%8)%8
		case 3: // commit
			off += 8
			end = off
		default: // zeros, or the remains of an earlier torn append
			return end
		}
	}
}

// A node whose log store cannot write (a full disk) stops, saying so,
// instead of falling behind for good while it answers ready and serves
// ever staler reads (raft-wal seals its segment after one failed write).
// The others go on.
func TestFullDiskStopsTheNode(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	fi, f := c.Follower()
	f.FailLogWrites(fmt.Errorf("write wal/00001.wal: %w", syscall.ENOSPC))
	mustGrant(t, l, acq("full/1", "h", 1, time.Minute))
	select {
	case <-f.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the node whose disk is full is still running")
	}
	if err := f.Err(); !errors.Is(err, node.ErrFatal) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("Err: %v; want ErrFatal naming the full disk", err)
	}
	c.Kill(fi)
	_, l = c.Leader()
	mustGrant(t, l, acq("full/2", "h", 1, time.Minute))
}
