package loglimit

import "testing"

// One line of a kind passes per Every; the next that passes carries the
// count of those left out. Other kinds pass meanwhile.
func TestLimiter(t *testing.T) {
	l := New()
	if ok, n := l.Allow("a"); !ok || n != 0 {
		t.Fatalf("first a: %v %d", ok, n)
	}
	for range 5 {
		if ok, _ := l.Allow("a"); ok {
			t.Fatal("a repeated within Every passed")
		}
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("first b was held back by a")
	}
	l.kinds["a"].last = l.kinds["a"].last.Add(-Every)
	if ok, n := l.Allow("a"); !ok || n != 5 {
		t.Fatalf("a after Every: %v, %d left out, want 5", ok, n)
	}
}

// A line's kind ends before the first detail a sender controls.
func TestKind(t *testing.T) {
	for msg, want := range map[string]string{
		`Decrypt packet failed: unsupported encryption version 3 from=10.0.0.1:7946`: "Decrypt packet failed",
		`http2: server connection error from 127.0.0.1:5: COMPRESSION_ERROR`:         "http2: server connection error from ",
		`http: TLS handshake error from [::1]:5: EOF`:                                "http: TLS handshake error from [",
		`discarding packet with unacceptable label "\x01": from=10.0.0.1`:            "discarding packet with unacceptable label ",
	} {
		if got := Kind(msg); got != want {
			t.Errorf("Kind(%q) = %q, want %q", msg, got, want)
		}
	}
}
