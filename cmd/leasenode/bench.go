package main

import (
	"context"
	"errors"
)

func runBench(ctx context.Context, sig *signals, args []string) error {
	return errors.New("bench: not built yet")
}
