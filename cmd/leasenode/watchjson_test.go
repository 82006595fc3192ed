package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: watch lists a held key and a key in its lock-delay with the
// same words in its text and -o json output, the words get uses (-o json
// said "granted" with "current":true where the text said "held", and the
// text said "lockdelay" where get says "lock-delay"; new-user review).
func TestWatchListingWordsAgree(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1))
	for _, args := range [][]string{
		{"acquire", "w/held", "--ttl", "1m"},
		{"acquire", "w/delayed", "--ttl", "1s", "--lock-delay", "1m"},
	} {
		if code, out, errOut := cli(t, append(args, "--addr", addr)...); code != 0 {
			t.Fatalf("%v: exit %d %s%s", args, code, out, errOut)
		}
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		code, out, errOut := cli(t, "get", "w/delayed", "-o", "json", "--addr", addr)
		if code != 0 || !strings.Contains(out, `"state": "lock-delay"`) {
			return fmt.Errorf("get w/delayed: exit %d %s%s", code, out, errOut)
		}
		return nil
	})

	js := start(t, nil, "watch", "w/", "-o", "json", "--addr", addr)
	text := start(t, nil, "watch", "w/", "--addr", addr)
	types := map[string]string{}
	nodetest.Eventually(t, 10*time.Second, func() error {
		for _, line := range strings.Split(js.stdout.String(), "\n") {
			var e struct {
				Type    string `json:"type"`
				Key     string `json:"key"`
				Current bool   `json:"current"`
			}
			if line == "" || json.Unmarshal([]byte(line), &e) != nil || !e.Current {
				continue
			}
			types[e.Key] = e.Type
		}
		if len(types) < 2 {
			return fmt.Errorf("watch -o json listed %v; stdout %q stderr %q", types, js.stdout.String(), js.stderr.String())
		}
		return nil
	})
	if types["w/held"] != "held" || types["w/delayed"] != "lock-delay" {
		t.Errorf("watch -o json listing types %v, want w/held held and w/delayed lock-delay", types)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		out := text.stdout.String()
		if !strings.Contains(out, "held      w/held") || !strings.Contains(out, "lock-delay  w/delayed") {
			return fmt.Errorf("watch text: %q", out)
		}
		return nil
	})
	if strings.Contains(text.stdout.String(), "lockdelay") {
		t.Errorf("watch text says lockdelay: %q", text.stdout.String())
	}
}
