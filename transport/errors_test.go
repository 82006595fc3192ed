package transport

import (
	"context"
	"errors"
	"net"
	"testing"
)

func TestCallErrorClassification(t *testing.T) {
	notSent := &CallError{Addr: "a:1", Method: 3, Err: context.Canceled}
	if !errors.Is(notSent, ErrNotSent) || errors.Is(notSent, ErrNoReply) || !errors.Is(notSent, context.Canceled) {
		t.Fatalf("%v: wrong classification", notSent)
	}
	noReply := &CallError{Addr: "a:1", Method: 3, MaybeDelivered: true, Err: context.DeadlineExceeded}
	if errors.Is(noReply, ErrNotSent) || !errors.Is(noReply, ErrNoReply) || !errors.Is(noReply, context.DeadlineExceeded) {
		t.Fatalf("%v: wrong classification", noReply)
	}
	want := "transport: call method 3 on a:1: transport: no reply, request may have been delivered: context deadline exceeded"
	if got := noReply.Error(); got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func TestErrPartitionedIsNetError(t *testing.T) {
	var ne net.Error
	if !errors.As(ErrPartitioned, &ne) || ne.Timeout() {
		t.Fatal("ErrPartitioned must be a net.Error that is not a timeout")
	}
}
