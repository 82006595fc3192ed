package lease

import (
	"errors"
	"testing"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
)

// refusal is a node's connect error with code and, unless
// REASON_UNSPECIFIED, an ErrorDetail carrying reason.
func refusal(t *testing.T, code connect.Code, reason pb.Reason, msg string) error {
	t.Helper()
	ce := connect.NewError(code, errors.New(msg))
	if reason != pb.Reason_REASON_UNSPECIFIED {
		d, err := connect.NewErrorDetail(&pb.ErrorDetail{Reason: reason})
		if err != nil {
			t.Fatal(err)
		}
		ce.AddDetail(d)
	}
	return ce
}

// Only refusals of the request's size or item count make the client send
// extends in smaller batches. A refusal at --max-lease-bytes is
// resource_exhausted too (a size limit of the cluster's state, outsider
// review #7) but carries REASON_INVALID: a smaller batch cannot help, and
// it stays a final ErrInvalid.
func TestTooLargeOnlyForRequestSize(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"--max-request-bytes", refusal(t, connect.CodeResourceExhausted, pb.Reason_REASON_UNSPECIFIED, "request of more than 4194304 bytes: over the limit (agent --max-request-bytes)"), true},
		{"--max-extend-items", refusal(t, connect.CodeInvalidArgument, pb.Reason_REASON_INVALID, "node: invalid request: 20 items, over the limit (agent --max-extend-items 10)"), true},
		{"--max-lease-bytes", refusal(t, connect.CodeResourceExhausted, pb.Reason_REASON_INVALID, "node: invalid request: ... its limit (agent --max-lease-bytes 100)"), false},
		{"--max-waiters", refusal(t, connect.CodeResourceExhausted, pb.Reason_REASON_RESOURCE_EXHAUSTED, "node: too many waiting acquires (agent --max-waiters 8192)"), false},
	} {
		if got := tooLarge(c.err); got != c.want {
			t.Errorf("tooLarge(%s refusal) = %v, want %v", c.name, got, c.want)
		}
	}
	node := refusal(t, connect.CodeResourceExhausted, pb.Reason_REASON_INVALID, "node: invalid request: over (agent --max-lease-bytes 100)")
	if classifyAttempt(node) != final {
		t.Errorf("a --max-lease-bytes refusal is retried: %v", node)
	}
	if err := classify("acquire", "k", node); !errors.Is(err, ErrInvalid) {
		t.Errorf("a --max-lease-bytes refusal: %v, want ErrInvalid", err)
	}
}
