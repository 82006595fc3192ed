package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/leasenode/leasenode/internal/buildinfo"
	"github.com/leasenode/leasenode/lease"
)

const healthSynopsis = `Asks one agent whether it is ready (GET /readyz: it knows a leader and has
applied what was committed), or with --live only whether it runs (GET
/healthz), and exits 0 if so, 1 if not (printing the agent's reason), 3 if
it cannot be reached, 2 if the TLS flags do not fit it (plain HTTP to a TLS
port or the reverse, a client certificate it requires: the message says
what to set) or --addr is an agent's node or gossip port. It probes one agent: given a list (LEASENODE_ADDR set for the other
commands), the first address, and says so. It is the probe for a container image without a
shell: Docker's HEALTHCHECK runs "leasenode health". --addr takes the
agent's --api address, or its --http one (plain HTTP, no client
certificate or token: the probes are never behind the token).`

func (ap *app) healthCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "health [--addr IP:PORT] [--live] [flags]", Short: "probe an agent's /readyz (or /healthz): exit 0 when ready", Long: healthSynopsis, Args: nargs(0, 0)}
	cf := &clientFlags{}
	cf.register(cmd)
	live := cmd.Flags().Bool("live", false, "ask /healthz (the process serves) instead of /readyz (the node is ready)")
	cmd.Flags().Lookup("timeout").DefValue = "2s"
	cf.timeout = 2 * time.Second
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		path := "/readyz"
		if *live {
			path = "/healthz"
		}
		return runHealth(ctx, ap, cf, path)
	})
	return cmd
}

func runHealth(ctx context.Context, ap *app, cf *clientFlags, path string) error {
	t, err := cf.tlsConfig()
	if err != nil {
		return err
	}
	addrs := cf.addrs()
	if len(addrs) > 1 {
		// A probe answers for one agent: "ready" for a list would hide
		// which one is not. A list (LEASENODE_ADDR set for the other
		// commands, a container's HEALTHCHECK) probes its first agent,
		// and says so.
		fmt.Fprintf(os.Stderr, "leasenode health: probing %s, the first of %d addresses (health answers for one agent)\n", addrs[0], len(addrs))
	}
	addr := addrs[0]
	scheme := "http"
	if t != nil {
		scheme = "https"
	}
	hc := &http.Client{Timeout: cf.timeout, Transport: &http.Transport{TLSClientConfig: t}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+path, nil)
	if err != nil {
		return usagef("--addr %q: %v", addr, err)
	}
	req.Header.Set("User-Agent", "leasenode-health/"+buildinfo.Get().Version)
	resp, err := hc.Do(req)
	if err != nil {
		// A TLS mismatch is a setup to fix, not a node that is down or not
		// ready: exit 2 with what to set (as get and status say it).
		if p := lease.TLSProblemOf(err, t != nil); p != 0 {
			return &exitError{code: exitUsage, msg: fmt.Sprintf("%s%s: %v\n  hint: %s", addr, path, err, tlsHint(p))}
		}
		return &exitError{code: exitUnreachable, msg: fmt.Sprintf("%s%s: %v", addr, path, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode == http.StatusBadRequest && t == nil {
		// What Go's server answers plain HTTP on a TLS port with: not
		// "not ready".
		return &exitError{code: exitUsage, msg: fmt.Sprintf("%s%s: %s: %s\n  hint: %s", addr, path, resp.Status, msg, tlsHint(lease.TLSNodeRequiresTLS))}
	}
	if port := resp.Header.Get("Leasenode-Port"); resp.StatusCode == http.StatusMisdirectedRequest && port != "" {
		// A node or gossip port's wrong-port answer: a wrong --addr, not
		// an agent that is not ready.
		// The body says which port it is ("this is a leasenode node
		// port ..."): it was said twice (new-user review).
		return &exitError{code: exitUsage, msg: fmt.Sprintf("%s: %s\n  hint: health probes an agent's --api or --http address: give one of those",
			addr, wrongPortMessage(body))}
	}
	if resp.StatusCode != http.StatusOK {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("%s%s: %s: %s", addr, path, resp.Status, msg)}
	}
	if !cf.json() {
		fmt.Fprintf(ap.stdout, "%s%s: %s\n", addr, path, msg)
	} else {
		printJSON(map[string]any{"addr": addr, "path": path, "status": resp.StatusCode, "body": msg})
	}
	return nil
}

func (ap *app) versionCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "version [-o json]", Short: "print the version, VCS revision and Go version of this binary", Args: nargs(0, 0),
		Long: `Prints this binary's build: the module version, the VCS revision it was
built from (dirty if the work tree had uncommitted changes) and the Go
version. "leasenode --version" prints the same. The agents report theirs in
"leasenode status" and "members", and as the leasenode_build_info metric.`}
	output := cmd.Flags().StringP("output", "o", "table", "output format: table or json")
	completeWords(cmd, "output", "table", "json")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		in := buildinfo.Get()
		switch *output {
		case "json":
			printJSON(in)
		case "table":
			fmt.Fprintln(ap.stdout, in.String())
		default:
			return usagef("-o %q: want table or json", *output)
		}
		return nil
	})
	return cmd
}

// wrongPortMessage is the message of a wrong-port answer's body (a Connect
// error), or the body itself if it is not one.
func wrongPortMessage(body []byte) string {
	var ce struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &ce) == nil && ce.Message != "" {
		return ce.Message
	}
	return strings.TrimSpace(string(body))
}
