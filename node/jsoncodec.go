package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonCodec is connect's JSON codec (protojson, unknown fields discarded)
// with one change: a request whose JSON holds a duration protojson cannot
// parse is refused with how durations are written and their limit. A TTL
// of "100000h" was refused with only `invalid google.protobuf.Duration
// value "100000h"` (found by an outsider's review): protojson takes only
// seconds with an "s" suffix, and refuses the value before the API can
// check the TTL's range. The API registers it under both names connect
// gives its own ("json", and "json; charset=utf-8").
type jsonCodec struct{ name string }

// durationHint is what jsonCodec adds to a refused duration.
const durationHint = `: JSON durations are seconds with an "s" suffix ("30s", "0.5s"); a TTL or lock-delay is at most 24h ("86400s")`

// Name implements connect.Codec.
func (c jsonCodec) Name() string { return c.name }

// Marshal implements connect.Codec.
func (c jsonCodec) Marshal(message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a proto.Message", message)
	}
	return protojson.MarshalOptions{}.Marshal(m)
}

// MarshalAppend is Marshal appending to dst (connect uses it when present).
func (c jsonCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a proto.Message", message)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, m)
}

// MarshalStable is Marshal with whitespace compacted, as connect's own.
func (c jsonCodec) MarshalStable(message any) ([]byte, error) {
	b, err := c.Marshal(message)
	if err != nil {
		return nil, err
	}
	out := bytes.NewBuffer(b[:0])
	if err := json.Compact(out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// IsBinary reports that JSON is text.
func (c jsonCodec) IsBinary() bool { return false }

// Unmarshal implements connect.Codec.
func (c jsonCodec) Unmarshal(b []byte, message any) error {
	m, ok := message.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a proto.Message", message)
	}
	if len(b) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		if strings.Contains(err.Error(), "google.protobuf.Duration") {
			return fmt.Errorf("unmarshal into %T: %w%s", message, err, durationHint)
		}
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}
