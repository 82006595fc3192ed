//go:build !linux

package node

import "syscall"

// unread cannot tell on this system: a paced connection is never taken
// for a backlogged one.
func unread(syscall.Conn) (int, bool) { return 0, false }
