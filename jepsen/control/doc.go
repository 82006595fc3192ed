// Package control runs a leasenode cluster for the chaos harness: it builds
// the agent binary once, starts each node as a separate process with its
// own data directory and captured log, and gives the nemesis its levers
// (kill -9 and restart, SIGSTOP/SIGCONT, graceful stop and start, network
// partitions) plus the observations it needs (who is leader, each node's
// state digest).
//
// It owns processes, network namespaces and firewall rules; it does not
// decide when to inject a fault (package nemesis) or talk the lease
// protocol beyond status probes (package workload uses package lease).
//
// # Two ways to run nodes
//
// Netns (root, iproute2): every node runs in its own network namespace
// with one veth into a bridge. The bridge lives in a further namespace,
// the hub, which is where the harness's own clients run (the runner
// re-executes itself there with `ip netns exec`). Addresses come from
// 10.77.0.0/24 and exist only inside namespaces this package created: the
// hub is 10.77.0.1, node i is 10.77.0.(10+i). The host's own namespace,
// interfaces, routes and firewall are never touched, and deleting the
// namespaces removes everything. Partitions are firewall rules inside the
// nodes' namespaces that drop packets from chosen peers: nftables if `nft`
// is installed, else iptables, else blackhole routes (iproute2 only).
//
// Loopback (no root, or no `ip`): nodes are plain processes on
// 127.0.0.(10+i) with free ports; only process faults (kill, pause, stop)
// are available, and the harness says so.
//
// # Cleanup
//
// Processes are started in their own process group (ctrl-c reaches the
// harness, which stops them in order) with a parent-death signal (if the
// harness dies, they die). Network.Destroy kills whatever still runs inside
// the namespaces (`ip netns pids`) and deletes them; the runner calls it on
// exit, after a failure and on SIGINT/SIGTERM.
package control
