package main

import (
	"context"
	"errors"
)

func runDemo(ctx context.Context, sig *signals, args []string) error {
	return errors.New("demo: not built yet")
}

func runBench(ctx context.Context, sig *signals, args []string) error {
	return errors.New("bench: not built yet")
}
