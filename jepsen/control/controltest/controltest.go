// Package controltest provides a stand-in for the leasenode agent, so that
// the harness's process control, nemesis and probes are tested without
// the real binary: a test binary re-executes itself as a fake agent that
// answers the Status and List RPCs in Connect's JSON, reports itself ready
// like the agent does, and exits on SIGTERM.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) {
//		controltest.MaybeRun()
//		os.Exit(m.Run())
//	}
//
// and pass Command() as control.Options.Command.
package controltest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/jepsen/control"
)

// Env selects the helper's role in a re-executed test binary.
const Env = "LEASENODE_JEPSEN_CONTROLTEST"

// MaybeRun runs the helper role named by Env (and exits) if it is set;
// otherwise it returns at once.
func MaybeRun() {
	switch os.Getenv(Env) {
	case "":
		return
	case "agent":
		fakeAgent(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1])
		os.Exit(0)
	case "dial":
		c, err := net.DialTimeout("tcp", os.Args[len(os.Args)-1], 500*time.Millisecond)
		if err != nil {
			fmt.Println("unreachable:", err)
			os.Exit(3)
		}
		c.Close()
		fmt.Println("reachable")
		os.Exit(0)
	default:
		fmt.Fprintln(os.Stderr, "unknown helper role", os.Getenv(Env))
		os.Exit(2)
	}
}

// Command returns the control.Options.Command that starts fake agents:
// this test binary re-executed with Env=agent. Node n1 claims to be the
// leader; every node reports applied index 42 and the same two leases.
func Command() func(n *control.Node) []string {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return func(n *control.Node) []string {
		return []string{"env", Env + "=agent", self, n.ID, n.APIAddr}
	}
}

// DialArgs returns a command line that exits 0 if addr accepts a TCP
// connection within half a second (run it inside a namespace with
// `ip netns exec`).
func DialArgs(addr string) (argv []string, env string) {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{self, addr}, Env + "=dial"
}

func fakeAgent(id, addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/leasenode.v1.LeaseService/Status", func(w http.ResponseWriter, r *http.Request) {
		state := "Follower"
		if id == "n1" {
			state = "Leader"
		}
		fmt.Fprintf(w, `{"header":{"leaderId":"n1","leaderAddr":"x","nodeId":%q,"epoch":"3","appliedIndex":"42"},"nodeId":%q,"raftState":%q,"term":"3","serving":%v}`,
			id, id, state, state == "Leader")
	})
	mux.HandleFunc("/leasenode.v1.LeaseService/List", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Stale bool }
		json.NewDecoder(r.Body).Decode(&req)
		if !req.Stale {
			http.Error(w, `{"code":"invalid_argument"}`, http.StatusBadRequest)
			return
		}
		// remaining differs per node: the digest must ignore it.
		fmt.Fprint(w, `{"header":{"appliedIndex":"42"},"leases":[{"key":"b","holder":"c2","token":"9","ttl":"2s","state":"LEASE_STATE_HELD","remaining":"0.5s"},{"key":"a","holder":"c1","token":"7","ttl":"2s","state":"LEASE_STATE_HELD","remaining":"1.`+id[1:]+`s"}]}`)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go http.Serve(ln, mux)
	fmt.Println("leasenode agent ready api=" + addr)
	<-term
	fmt.Println("graceful exit")
}
