package node

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// unread returns how many bytes the peer sent that wait unread in the
// socket's receive queue, and whether it could tell.
func unread(c syscall.Conn) (int, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	n, ierr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
