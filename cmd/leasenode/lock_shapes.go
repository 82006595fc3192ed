package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/lease"
)

// shapeFlags are the lock-shape flags of the commands that take a lease
// (lock, acquire): -n N for one of N slots of a semaphore, --shared for a
// reader, --key (repeated) for further keys taken together with KEY, all
// or none.
type shapeFlags struct {
	n      int
	shared bool
	keys   stringList
	fs     *pflag.FlagSet // to tell -n 0 from no -n
}

// stringList is a flag that may be given several times.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// Type implements pflag.Value.
func (s *stringList) Type() string { return "KEY" }

func (s *shapeFlags) register(fs *pflag.FlagSet) {
	s.fs = fs
	fs.IntVarP(&s.n, "slots", "n", 0, "take one of N slots of KEY, a semaphore of N (every holder must give the same N)")
	fs.BoolVar(&s.shared, "shared", false, "take KEY shared: any number of shared holders, no exclusive one beside them (readers)")
	fs.Var(&s.keys, "key", "a further key to take together with KEY, all or none (repeat it; -n and --shared apply to every key)")
	perInvocation(fs, "key")
}

// items returns what to acquire: KEY and every --key, in the shape the
// flags say.
func (s *shapeFlags) items(key string) ([]lease.Item, error) {
	if s.n != 0 && s.shared {
		return nil, &usageError{msg: "-n and --shared: a key is a semaphore or shared, not both",
			hint: "give -n N for a semaphore of N slots (N holders at once), or --shared for a reader lock (any number of shared holders, no exclusive one)"}
	}
	if s.n < 0 || s.n == 0 && s.fs != nil && s.fs.Changed("slots") {
		return nil, usagef("-n %d: want at least 1 (without -n the key is exclusive)", s.n)
	}
	var out []lease.Item
	for _, k := range append([]string{key}, s.keys...) {
		out = append(out, lease.Item{Key: k, Shared: s.shared, Semaphore: s.n})
	}
	return out, nil
}

// env is what CMD learns of a multi-key lease beside LEASE_KEY (the first
// key): LEASE_KEYS, every key, comma-separated.
func (s *shapeFlags) env(l *lease.Lease) []string {
	if len(s.keys) == 0 {
		return nil
	}
	return []string{"LEASE_KEYS=" + strings.Join(l.Keys(), ",")}
}

// tryItems, waitItems and waitItemsTimeout are TryAcquire, Acquire and
// AcquireTimeout for one key in a shape or for a set.
func tryItems(ctx context.Context, c *lease.Client, items []lease.Item, opts ...lease.AcquireOption) (*lease.Lease, error) {
	if len(items) > 1 {
		return c.TryAcquireSet(ctx, items, opts...)
	}
	return c.TryAcquire(ctx, items[0].Key, append(opts, shapeOptions(items[0])...)...)
}

func waitItems(ctx context.Context, c *lease.Client, items []lease.Item, opts ...lease.AcquireOption) (*lease.Lease, error) {
	if len(items) > 1 {
		return c.AcquireSet(ctx, items, opts...)
	}
	return c.Acquire(ctx, items[0].Key, append(opts, shapeOptions(items[0])...)...)
}

func waitItemsTimeout(ctx context.Context, c *lease.Client, items []lease.Item, d time.Duration, opts ...lease.AcquireOption) (*lease.Lease, error) {
	if len(items) > 1 {
		return c.AcquireSetTimeout(ctx, items, d, opts...)
	}
	return c.AcquireTimeout(ctx, items[0].Key, d, append(opts, shapeOptions(items[0])...)...)
}

func shapeOptions(it lease.Item) []lease.AcquireOption {
	switch {
	case it.Shared:
		return []lease.AcquireOption{lease.Shared()}
	case it.Semaphore != 0:
		return []lease.AcquireOption{lease.Semaphore(it.Semaphore)}
	}
	return nil
}
