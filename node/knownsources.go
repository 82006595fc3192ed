package node

import (
	"net"
	"sync"
	"time"
)

// knownSources is the node port's transport.HandshakeLimit.Known: the IP
// addresses of the servers in the latest Raft configuration and of the
// gossip members (their gossip address, and their Raft address once the
// node there confirmed it), so that a flood of ClientHellos from
// elsewhere, or from the nodes' own /24, never refuses a node's dial to
// another: a candidate's vote requests, a follower reconnecting (outsider
// review s32 #6: requestVote dials refused at the handshake during a
// flood, elections of ~2.5 s). The gossip port reads streams from other
// addresses within a smaller cap and a shared budget (gossipTransport:
// gossipOutsiderStreamMaxBytes). Addresses given as names are not resolved
// and so not known. The set is rebuilt at most once per knownRefresh,
// as Known is asked for every ClientHello.
type knownSources struct {
	n  *Node
	mu sync.Mutex
	at time.Time // of the last rebuild
	ip map[string]bool
}

// knownRefresh bounds how stale the set of known addresses may be: a
// node just added to the configuration waits at most this long to be
// known (and competes with other sources meanwhile).
const knownRefresh = time.Second

// has reports whether ip is a known node's address.
func (k *knownSources) has(ip net.IP) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := time.Now(); k.ip == nil || now.Sub(k.at) >= knownRefresh {
		k.at, k.ip = now, k.build()
	}
	return k.ip[ip.String()]
}

// build returns the known addresses, by net.IP.String.
func (k *knownSources) build() map[string]bool {
	out := map[string]bool{}
	add := func(addr string) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		if ip := net.ParseIP(host); ip != nil {
			out[ip.String()] = true
		}
	}
	if r := k.n.raftp.Load(); r != nil {
		if f := r.GetConfiguration(); f.Error() == nil { // a copy, without the main loop
			for _, s := range f.Configuration().Servers {
				add(string(s.Address))
			}
		}
	}
	if k.n.members != nil {
		k.n.members.mu.Lock()
		for _, m := range k.n.members.m {
			add(m.Gossip)
			if m.confirmed() {
				add(m.Raft)
			}
		}
		k.n.members.mu.Unlock()
	}
	return out
}
