package transport

import (
	"errors"
	"fmt"
)

// Errors returned by this package. Compare with errors.Is; never match the
// text.
var (
	// ErrClosed is returned by an RPCClient or RPCServer that has been
	// closed. A call that fails because its client was closed wraps it too
	// (together with ErrNotSent or ErrNoReply, see CallError).
	ErrClosed = errors.New("transport: closed")

	// ErrNotSent marks a failed call whose request certainly did not reach
	// the remote handler: the dial failed, the caller's context ended before
	// the request was written in full, the request was too large, or the
	// server refused it before running the handler. Retrying is safe.
	ErrNotSent = errors.New("transport: request not delivered")

	// ErrNoReply marks a failed call whose request may have been delivered
	// and acted on, but no usable reply came back: the connection broke
	// after the request was written, the caller's context ended while
	// waiting, the reply was too large to read, or the handler returned an
	// error after its own context had ended. The outcome is unknown;
	// callers must not treat it as a plain failure.
	ErrNoReply = errors.New("transport: no reply, request may have been delivered")

	// ErrMessageTooLarge is returned when a request or a reply exceeds the
	// MaxMessage limit of either side. It is permanent for that message:
	// retrying the same request fails the same way. It always comes wrapped
	// in a *CallError, so ErrNotSent or ErrNoReply tells whether the handler
	// may have run (a reply too large to deliver means it did).
	ErrMessageTooLarge = errors.New("transport: message too large")

	// ErrPartitioned is returned by a Dialer whose Faults forbid the
	// connection. It satisfies net.Error and is not a timeout, so code that
	// classifies network errors sees a refused connection, not a slow one.
	ErrPartitioned error = partitionError{}

	// ErrRefused is wrapped by the *RefusedError a Dialer returns when the
	// node it reached refused it in the hello (another cluster, a node
	// waiting to bootstrap, an identity that does not match the
	// certificate). Calls fail with it wrapped in ErrNotSent.
	ErrRefused = errors.New("transport: refused by peer")

	// ErrWrongPeer is returned by RPCClient.CallNode when the node at the
	// address is not the node the caller meant (it authenticated, or on
	// plain TCP claimed, another ID). The request was not sent.
	ErrWrongPeer = errors.New("transport: address belongs to another node")

	// errProtocol reports a peer that violated the frame format. The
	// connection is closed; it never reaches callers except as the cause
	// inside a CallError.
	errProtocol = errors.New("transport: protocol violation")
)

// partitionError is the type of ErrPartitioned.
type partitionError struct{}

func (partitionError) Error() string   { return "transport: network partitioned (fault injection)" }
func (partitionError) Timeout() bool   { return false }
func (partitionError) Temporary() bool { return false }

// CallError is returned by RPCClient.Call when no reply from the remote
// handler was received. It wraps exactly one of ErrNotSent (the handler
// certainly did not run: safe to retry) or ErrNoReply (it may have run: the
// outcome is unknown), and the cause (a dial error, context.Canceled,
// context.DeadlineExceeded, ErrMessageTooLarge, ErrClosed, ErrPartitioned, an
// I/O error). Both are reachable with errors.Is.
//
// Errors returned by the remote handler itself are not CallErrors: they come
// back as RPCClientConfig.DecodeError made them (or as a *RemoteError), and
// mean the handler ran and reported that error. The exception is a handler
// error returned after the handler's context ended: it becomes the Err of a
// CallError with MaybeDelivered set.
type CallError struct {
	// Addr is the peer's address as passed to Call.
	Addr string
	// Method is the method number passed to Call.
	Method uint8
	// MaybeDelivered is false when the request certainly did not reach the
	// handler (the error wraps ErrNotSent) and true when it may have (the
	// error wraps ErrNoReply).
	MaybeDelivered bool
	// Err is the underlying cause.
	Err error
}

// Error implements error.
func (e *CallError) Error() string {
	return fmt.Sprintf("transport: call method %d on %s: %v: %v", e.Method, e.Addr, e.class(), e.Err)
}

// Unwrap returns the classification sentinel and the cause, so that
// errors.Is(err, ErrNoReply) and errors.Is(err, context.DeadlineExceeded)
// both hold for the same error.
func (e *CallError) Unwrap() []error { return []error{e.class(), e.Err} }

func (e *CallError) class() error {
	if e.MaybeDelivered {
		return ErrNoReply
	}
	return ErrNotSent
}

// RemoteError is an error returned by the remote handler that could not be
// turned back into a typed error: the server has no
// RPCServerConfig.EncodeError, or the client has no
// RPCClientConfig.DecodeError or it returned nil. The handler did run.
type RemoteError struct {
	// Message is the remote error's text, or a description of the
	// undecodable error payload.
	Message string
}

// Error implements error.
func (e *RemoteError) Error() string { return "transport: remote error: " + e.Message }
