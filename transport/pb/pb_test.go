package pb

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestAcquireRequestRoundTrip(t *testing.T) {
	in := &AcquireRequest{
		Key:       "a",
		Holder:    "h",
		RequestId: 1,
		Ttl:       durationpb.New(10 * time.Second),
		LockDelay: durationpb.New(250 * time.Millisecond),
		Value:     []byte("v"),
		Wait:      true,
	}

	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatalf("proto.Marshal: %v", err)
	}
	var out AcquireRequest
	if err := proto.Unmarshal(b, &out); err != nil {
		t.Fatalf("proto.Unmarshal: %v", err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("proto round trip: got %v, want %v", &out, in)
	}

	j, err := protojson.Marshal(in)
	if err != nil {
		t.Fatalf("protojson.Marshal: %v", err)
	}
	var outJSON AcquireRequest
	if err := protojson.Unmarshal(j, &outJSON); err != nil {
		t.Fatalf("protojson.Unmarshal(%s): %v", j, err)
	}
	if !proto.Equal(in, &outJSON) {
		t.Fatalf("protojson round trip: got %v, want %v", &outJSON, in)
	}
}

func TestAcquireRequestJSON(t *testing.T) {
	const in = `{"key":"a","holder":"h","requestId":"1","ttl":"10s","wait":true}`
	var got AcquireRequest
	if err := protojson.Unmarshal([]byte(in), &got); err != nil {
		t.Fatalf("protojson.Unmarshal(%s): %v", in, err)
	}
	want := &AcquireRequest{
		Key:       "a",
		Holder:    "h",
		RequestId: 1,
		Ttl:       durationpb.New(10 * time.Second),
		Wait:      true,
	}
	if !proto.Equal(&got, want) {
		t.Fatalf("got %v, want %v", &got, want)
	}
}
