// Package holdset summarises a holder's set of live holdings in a few
// bytes, so that a client can ask the cluster to extend all of them at
// once ("extend everything I hold, if what you hold for me is exactly
// this") without naming each lease. The client (package lease) and the
// state machine (package fsm) compute the same Sum over the same units:
// one per grant, named by its least key and its fencing token.
//
// The digest is a sum of 64-bit hashes, so it does not depend on order
// and a set can be summed as it is walked. It guards against accidents
// (a lease one side holds and the other does not), not against a forger:
// a client can extend only its own holder's leases with it, which it can
// already do lease by lease.
package holdset

// Sum summarises a set of holdings: how many, and the sum of their
// units' hashes (mod 2^64).
type Sum struct {
	Count  uint32
	Digest uint64
}

// Add counts the holding of key with token.
func (s *Sum) Add(key string, token uint64) {
	s.Count++
	s.Digest += Unit(key, token)
}

// Unit is the hash of one holding: FNV-1a of the key, mixed with the
// token through SplitMix64's finaliser. It is part of the wire protocol
// (a client and a server of different builds must agree): never change it.
func Unit(key string, token uint64) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime
	}
	return mix(h ^ mix(token))
}

func mix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
