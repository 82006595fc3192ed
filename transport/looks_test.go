package transport

import (
	"strings"
	"testing"
)

// A refused node-port connection says what the peer seems to speak: HTTP
// (a client at the wrong port) or TLS (a node with a key talking to one
// without).
func TestLooksLike(t *testing.T) {
	for _, tc := range []struct {
		first byte
		want  string
	}{
		{'P', "client API port"}, {'G', "client API port"}, {0x16, "--cluster-key-file"}, {0, ""}, {ProtoRaft, ""},
	} {
		got := looksLike(tc.first)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("looksLike(%#x) = %q, want it to mention %q", tc.first, got, tc.want)
		}
	}
}
