package holdset

import (
	"hash/fnv"
	"testing"
)

// The unit hash is part of the wire protocol: these values must never
// change.
func TestUnitIsStable(t *testing.T) {
	for _, c := range []struct {
		key   string
		token uint64
		want  uint64
	}{
		{"a", 1, 0x1e294378b45c3f93},
		{"jobs/nightly", 12345, 0x228bf83bfbf59e96},
	} {
		if got := Unit(c.key, c.token); got != c.want {
			t.Errorf("Unit(%q, %d) = %#x, want %#x", c.key, c.token, got, c.want)
		}
	}
}

func TestSumIgnoresOrderAndSeesDifferences(t *testing.T) {
	var a, b, c Sum
	a.Add("x", 1)
	a.Add("y", 2)
	b.Add("y", 2)
	b.Add("x", 1)
	if a != b {
		t.Fatalf("order changed the sum: %+v vs %+v", a, b)
	}
	c.Add("x", 2)
	c.Add("y", 1)
	if a == c {
		t.Fatalf("swapped tokens gave the same sum %+v", a)
	}
}

// Unit's key hash is FNV-1a (64 bits), as the standard library computes it.
func TestUnitHashesKeysWithFNV1a(t *testing.T) {
	for _, key := range []string{"", "a", "jobs/nightly", "\xff\x00k"} {
		h := fnv.New64a()
		h.Write([]byte(key))
		if got, want := Unit(key, 7), mix(h.Sum64()^mix(7)); got != want {
			t.Errorf("Unit(%q, 7) = %#x, want %#x", key, got, want)
		}
	}
}
