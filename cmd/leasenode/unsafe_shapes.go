package main

import (
	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/node"
)

// unsafeShapeFlags are the agent's UNSAFE lock-shape switches, for the
// chaos harness to show its shape checkers catch a broken server. Like
// every --unsafe-* flag they need LEASENODE_UNSAFE=1.
type unsafeShapeFlags struct {
	semaphoreOvergrant, sharedBesideExclusive, partialSet bool
}

// register defines the flags on fs and returns their names.
func (u *unsafeShapeFlags) register(fs *pflag.FlagSet) []string {
	fs.BoolVar(&u.semaphoreOvergrant, "unsafe-semaphore-overgrant", false, "UNSAFE: grant a semaphore of N to N+1 holders (chaos tests; needs LEASENODE_UNSAFE=1)")
	fs.BoolVar(&u.sharedBesideExclusive, "unsafe-shared-beside-exclusive", false, "UNSAFE: grant shared holdings beside an exclusive one (chaos tests; needs LEASENODE_UNSAFE=1)")
	fs.BoolVar(&u.partialSet, "unsafe-partial-set", false, "UNSAFE: grant the free keys of a multi-key acquire and skip the others (chaos tests; needs LEASENODE_UNSAFE=1)")
	return []string{"unsafe-semaphore-overgrant", "unsafe-shared-beside-exclusive", "unsafe-partial-set"}
}

// apply sets the node's TestingKnobs for the flags that are on.
func (u *unsafeShapeFlags) apply(cfg *node.Config) {
	if !u.semaphoreOvergrant && !u.sharedBesideExclusive && !u.partialSet {
		return
	}
	if cfg.Testing == nil {
		cfg.Testing = &node.TestingKnobs{}
	}
	cfg.Testing.SemaphoreOvergrant = u.semaphoreOvergrant
	cfg.Testing.SharedBesideExclusive = u.sharedBesideExclusive
	cfg.Testing.PartialSet = u.partialSet
}
