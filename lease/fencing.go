package lease

import (
	"fmt"
	"sync"
)

// Fence is the resource side of fencing tokens: it remembers the highest
// token seen per key and refuses writes that carry a lower one. A holder
// that was paused (GC, VM migration, SIGSTOP) past its lease wakes up with
// an old token; the Fence rejects its writes because the next holder's
// token is higher. Put a Fence (or the same rule, in the resource's own
// storage) in front of everything a lease protects.
//
// A Fence in one process protects only that process's view; a resource
// served by several processes must keep the highest token in its own
// shared storage, or ask the cluster with Client.CheckToken.
//
// The zero Fence is empty and ready to use (a struct field needs no
// NewFence). A Fence must not be copied after first use.
type Fence struct {
	mu      sync.Mutex
	highest map[string]uint64
}

// NewFence returns an empty Fence.
func NewFence() *Fence { return &Fence{highest: map[string]uint64{}} }

// Check admits a write for key carrying token if token is at least the
// highest seen for key, and records it; otherwise it returns an error
// matching ErrStaleToken. Equal tokens pass: one holder writes many times.
// Token 0 is no lease's (what TokenFor returns for a key not held) and is
// always refused. It is for one writer at a time: Shared readers use
// CheckRead, and Semaphore holders, several at once, are not fenced by it
// (see the package doc).
func (f *Fence) Check(key string, token uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token == 0 {
		return fmt.Errorf("%w: key %q token 0: no lease carries it (a write without a lease?)", ErrStaleToken, key)
	}
	if h := f.highest[key]; token < h {
		return fmt.Errorf("%w: key %q token %d, already saw %d", ErrStaleToken, key, token, h)
	}
	if f.highest == nil {
		f.highest = map[string]uint64{}
	}
	f.highest[key] = token
	return nil
}

// CheckRead admits a read of key by a holder of token (a Shared holder)
// if no write with a higher token was admitted by Check, and records
// nothing: readers do not fence each other, only writers fence readers.
// Otherwise it returns an error matching ErrStaleToken: a writer was
// granted the key after this reader, so what the reader holds may be
// stale.
func (f *Fence) CheckRead(key string, token uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token == 0 {
		return fmt.Errorf("%w: read of key %q with token 0: no lease carries it", ErrStaleToken, key)
	}
	if h := f.highest[key]; token < h {
		return fmt.Errorf("%w: read of key %q with token %d, a write with %d was admitted", ErrStaleToken, key, token, h)
	}
	return nil
}

// Highest returns the highest token seen for key.
func (f *Fence) Highest(key string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.highest[key]
}
