package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// Scenario: acquire -n 3 of a key held as a semaphore of 2, with one slot
// free and with every slot taken, -o json. Each refusal exits 4, says the
// key is a semaphore of 2 in the CLI's words (not "lease: invalid
// request:", which reads as bad usage), and prints its JSON on stdout as a
// held key's refusal does (new-user review L5: stdout was empty, and with
// every slot taken the error said only "held by ...").
func TestSemaphoreMismatchSaysSoInJSON(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1))
	check := func(what string) {
		t.Helper()
		code, out, errOut := cli(t, "acquire", "sem", "-n", "3", "--wait", "0", "-o", "json", "--addr", addr)
		t.Logf("%s: exit %d, stdout %q, stderr %q", what, code, out, errOut)
		if code != exitHeld {
			t.Errorf("%s: exit %d, want %d", what, code, exitHeld)
		}
		if !strings.Contains(errOut, "semaphore of 2") || !strings.Contains(errOut, "use -n 2") {
			t.Errorf("%s: stderr %q does not say the key is a semaphore of 2 (use -n 2)", what, errOut)
		}
		if strings.Contains(errOut, "invalid request") {
			t.Errorf("%s: stderr %q calls a conflict with the key's state an invalid request", what, errOut)
		}
		var got struct {
			Key       string `json:"key"`
			Acquired  *bool  `json:"acquired"`
			Semaphore int    `json:"semaphore"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Key != "sem" || got.Acquired == nil || *got.Acquired || got.Semaphore != 2 {
			t.Errorf("%s: stdout %q (%v), want JSON with key sem, acquired false, semaphore 2", what, out, err)
		}
	}
	if code, _, errOut := cli(t, "acquire", "sem", "-n", "2", "--ttl", "1m", "--addr", addr); code != 0 {
		t.Fatalf("first slot: exit %d: %s", code, errOut)
	}
	check("one slot of 2 free")
	if code, _, errOut := cli(t, "acquire", "sem", "-n", "2", "--ttl", "1m", "--addr", addr); code != 0 {
		t.Fatalf("second slot: exit %d: %s", code, errOut)
	}
	check("every slot taken")
}
