package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Scenario: the Python client (clients/python, standard library only)
// against a real 3-agent cluster that requires an auth token: its
// unittest suite (lock as a context manager, keepalive, fencing tokens,
// validity from send time, request-id retries, loss when extends fail).
// Skipped, saying so, only when python3 is not installed and
// LEASENODE_REQUIRE_PYTHON is unset; .ci/run installs python3 and sets it.
func TestPythonClient(t *testing.T) {
	t.Parallel()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("LEASENODE_REQUIRE_PYTHON") != "" {
			t.Fatalf("python3 not found and LEASENODE_REQUIRE_PYTHON is set: %v", err)
		}
		t.Skip("python3 not found: the Python client's tests did not run (apt-get install python3; .ci/run does)")
	}
	const token = "python-test-token"
	agents := cluster(t, 3, "--auth-token", token)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := filepath.Abs("../../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "discover", "-v", "-s", "tests")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "LEASENODE_ADDR="+addrs(agents), "LEASENODE_AUTH_TOKEN="+token, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("python3 -m unittest:\n%s", out)
	if err != nil {
		t.Fatalf("the Python client's tests failed: %v", err)
	}
}
