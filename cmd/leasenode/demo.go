package main

import (
	"context"
	"fmt"
	"os"

	"github.com/leasenode/leasenode/internal/demo"
)

const demoSynopsis = `demo [--short]

A self-contained showcase (about 35 s; --short about 12 s): starts a 3-node
cluster in this process on free loopback ports, runs workers that compete
for a few keys and write to a toy resource guarded by fencing tokens,
crashes the leader and restarts it, freezes one worker past its TTL, and
prints a timeline and a summary. Exits 1 if any safety check fails.`

func runDemo(ctx context.Context, sig *signals, args []string) error {
	fs := newFlags("demo", demoSynopsis)
	short := fs.Bool("short", false, "a shorter run (about 12 s), for CI")
	pos, _, err := parseFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("demo takes no arguments, got %q", pos)
	}
	ctx, cancel := sig.cancelOn(ctx)
	defer cancel()
	r, err := demo.Run(ctx, demo.Options{Short: *short, Out: os.Stdout})
	if err != nil {
		return err
	}
	if len(r.Violations) > 0 {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("%d safety violations", len(r.Violations))}
	}
	return nil
}
