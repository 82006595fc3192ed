package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/leasenode/leasenode/lease"
)

// A system is one lock service under test, driven by its own Go client.
type system interface {
	// dial opens one client connection (its own TCP connection(s) and,
	// for etcd and ZooKeeper, its own session).
	dial(ctx context.Context) (locker, error)
	// leader returns the index (0-2) of the node that leads now.
	leader(ctx context.Context) (int, error)
	// up reports node i answering as a member of a cluster with a leader.
	up(ctx context.Context, i int) bool
}

// A locker is one client of a system.
type locker interface {
	// lock takes key, waiting for it when wait is set. A key held by
	// someone else without wait is errHeld.
	lock(ctx context.Context, key string, wait bool) (held, error)
	close()
}

// held is one lock a locker holds.
type held interface {
	unlock(ctx context.Context) error
	// lost reports a lock the system no longer holds for its client
	// (leasenode: the lease ended; etcd: the lock key is gone; ZooKeeper:
	// the lock's znode is gone).
	lost(ctx context.Context) bool
}

var errHeld = errors.New("held by another client")

func newSystem(name string, endpoints []string, ttl time.Duration) (system, error) {
	switch name {
	case "leasenode":
		return &leasenodeSys{addrs: endpoints, ttl: ttl}, nil
	case "etcd":
		return &etcdSys{eps: endpoints, ttl: ttl}, nil
	case "zookeeper":
		return &zkSys{servers: endpoints, ttl: ttl}, nil
	}
	return nil, fmt.Errorf("unknown system %q (want leasenode, etcd or zookeeper)", name)
}

// ---- leasenode: lease.Dial, one Client per worker ----

type leasenodeSys struct {
	addrs []string
	ttl   time.Duration
}

func (s *leasenodeSys) dial(ctx context.Context) (locker, error) {
	cl, err := lease.Dial(ctx, s.addrs, lease.WithTTL(s.ttl))
	if err != nil {
		return nil, err
	}
	return &leasenodeLocker{cl: cl}, nil
}

func (s *leasenodeSys) leader(ctx context.Context) (int, error) {
	r, err := lease.NewRemote(s.addrs)
	if err != nil {
		return -1, err
	}
	defer r.Close()
	for i, a := range s.addrs {
		sctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
		st, err := r.StatusAt(sctx, a)
		cancel()
		if err == nil && st.GetRaftState() == "Leader" && st.GetServing() {
			return i, nil
		}
	}
	return -1, errors.New("no serving leader")
}

func (s *leasenodeSys) up(ctx context.Context, i int) bool {
	r, err := lease.NewRemote(s.addrs)
	if err != nil {
		return false
	}
	defer r.Close()
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := r.StatusAt(sctx, s.addrs[i])
	return err == nil && st.GetHeader().GetLeaderId() != ""
}

type leasenodeLocker struct{ cl *lease.Client }

func (l *leasenodeLocker) lock(ctx context.Context, key string, wait bool) (held, error) {
	var ls *lease.Lease
	var err error
	if wait {
		ls, err = l.cl.Acquire(ctx, key)
	} else {
		ls, err = l.cl.TryAcquire(ctx, key)
	}
	if err == nil && ls == nil {
		err = errHeld
	}
	if err != nil {
		if errors.Is(err, lease.ErrHeld) {
			err = errHeld
		}
		return nil, err
	}
	return leasenodeHeld{ls}, nil
}

func (l *leasenodeLocker) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.cl.Close(ctx)
}

type leasenodeHeld struct{ l *lease.Lease }

func (h leasenodeHeld) unlock(ctx context.Context) error { return h.l.Release(ctx) }
func (h leasenodeHeld) lost(context.Context) bool {
	select {
	case <-h.l.Done():
		return true
	default:
		return false
	}
}

// ---- etcd: clientv3 + concurrency.Session + concurrency.Mutex ----

type etcdSys struct {
	eps []string
	ttl time.Duration
}

func (s *etcdSys) newClient(ctx context.Context) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: s.eps, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: zap.NewNop()})
}

func (s *etcdSys) dial(ctx context.Context) (locker, error) {
	cli, err := s.newClient(context.Background())
	if err != nil {
		return nil, err
	}
	l := &etcdLocker{cli: cli, ttl: s.ttl}
	if _, err := l.session(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	return l, nil
}

func (s *etcdSys) leader(ctx context.Context) (int, error) {
	cli, err := s.newClient(context.Background())
	if err != nil {
		return -1, err
	}
	defer cli.Close()
	for i, ep := range s.eps {
		sctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond) // a dead node's share
		st, err := cli.Status(sctx, ep)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return i, nil
		}
	}
	return -1, errors.New("no leader")
}

func (s *etcdSys) up(ctx context.Context, i int) bool {
	cli, err := s.newClient(context.Background())
	if err != nil {
		return false
	}
	defer cli.Close()
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := cli.Status(sctx, s.eps[i])
	return err == nil && st.Leader != 0
}

type etcdLocker struct {
	cli  *clientv3.Client
	ttl  time.Duration
	sess *concurrency.Session
	// perLock gives each lock a session (a lease) of its own, kept alive
	// on its own, instead of the locker's one session: keepalive's
	// 10,000 locks are then 10,000 leases, as leasenode's are.
	perLock bool
}

// session returns the locker's session, a new one when the last expired
// (a leader gone for longer than the TTL ends it).
func (l *etcdLocker) session(context.Context) (*concurrency.Session, error) {
	if l.sess != nil {
		select {
		case <-l.sess.Done():
			l.sess = nil
		default:
			return l.sess, nil
		}
	}
	s, err := l.newSession()
	if err != nil {
		return nil, err
	}
	l.sess = s
	return s, nil
}

// newSession grants the session's lease under a deadline (NewSession's
// own Grant would wait as long as the cluster has no leader), then keeps
// it alive as NewSession does.
func (l *etcdLocker) newSession() (*concurrency.Session, error) {
	ttl := max(int64(l.ttl/time.Second), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := l.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	return concurrency.NewSession(l.cli, concurrency.WithTTL(int(ttl)), concurrency.WithLease(g.ID))
}

func (l *etcdLocker) lock(ctx context.Context, key string, wait bool) (held, error) {
	if l.perLock {
		s, err := l.newSession()
		if err != nil {
			return nil, err
		}
		h, err := etcdLock(ctx, l.cli, s, key, wait, s)
		if err != nil {
			s.Close()
		}
		return h, err
	}
	s, err := l.session(ctx)
	if err != nil {
		return nil, err
	}
	return etcdLock(ctx, l.cli, s, key, wait, nil)
}

func etcdLock(ctx context.Context, cli *clientv3.Client, s *concurrency.Session, key string, wait bool, own *concurrency.Session) (held, error) {
	m := concurrency.NewMutex(s, key)
	var err error
	if wait {
		err = m.Lock(ctx)
	} else {
		err = m.TryLock(ctx)
	}
	if errors.Is(err, concurrency.ErrLocked) {
		return nil, errHeld
	}
	if err != nil {
		return nil, err
	}
	return &etcdHeld{cli: cli, m: m, own: own}, nil
}

func (l *etcdLocker) close() {
	if l.sess != nil {
		l.sess.Close() // revokes the lease
	}
	l.cli.Close()
}

type etcdHeld struct {
	cli *clientv3.Client
	m   *concurrency.Mutex
	own *concurrency.Session // a session of this lock alone (keepalive), closed on unlock
}

func (h *etcdHeld) unlock(ctx context.Context) error {
	err := h.m.Unlock(ctx)
	if h.own != nil {
		h.own.Close()
	}
	return err
}

func (h *etcdHeld) lost(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := h.cli.Get(cctx, h.m.Key(), clientv3.WithCountOnly())
	return err != nil || resp.Count == 0
}

// ---- ZooKeeper: go-zookeeper's lock recipe (zk.NewLock) ----

type zkSys struct {
	servers []string
	ttl     time.Duration
}

func (s *zkSys) dial(ctx context.Context) (locker, error) {
	conn, ev, err := zk.Connect(s.servers, s.ttl, zk.WithLogger(nopLogger{}))
	if err != nil {
		return nil, err
	}
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateHasSession {
				go func() {
					for range ev {
					}
				}()
				return &zkLocker{conn: conn}, nil
			}
		case <-ctx.Done():
			conn.Close()
			return nil, ctx.Err()
		}
	}
}

// leader asks each server with the srvr four-letter word.
func (s *zkSys) leader(ctx context.Context) (int, error) {
	for i, a := range s.servers {
		out, err := fourLetter(ctx, a, "srvr")
		if err == nil && strings.Contains(out, "Mode: leader") {
			return i, nil
		}
	}
	return -1, errors.New("no leader")
}

func fourLetter(ctx context.Context, addr, word string) (string, error) {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(word)); err != nil {
		return "", err
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String(), nil
}

func (s *zkSys) up(ctx context.Context, i int) bool {
	out, err := fourLetter(ctx, s.servers[i], "srvr")
	return err == nil && (strings.Contains(out, "Mode: leader") || strings.Contains(out, "Mode: follower"))
}

type zkLocker struct{ conn *zk.Conn }

// lock takes the go-zookeeper lock recipe on the znode /key. The recipe
// always queues (no try-lock); the workloads that do not wait use keys no
// one else takes, so it never waits there.
func (l *zkLocker) lock(ctx context.Context, key string, wait bool) (held, error) {
	path := "/" + key
	m := zk.NewLock(l.conn, path, zk.WorldACL(zk.PermAll))
	// Lock takes no context: wait for ctx beside it, and let a Lock that
	// returns after ctx gave up release what it took.
	done := make(chan error, 1)
	var gaveUp atomic.Bool
	go func() {
		err := m.Lock()
		if err == nil && gaveUp.Load() {
			m.Unlock()
			err = context.Canceled
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
		return &zkHeld{conn: l.conn, m: m, path: path}, nil
	case <-ctx.Done():
		gaveUp.Store(true)
		// Lock may have returned just now.
		select {
		case err := <-done:
			if err == nil {
				return &zkHeld{conn: l.conn, m: m, path: path}, nil
			}
		default:
		}
		return nil, ctx.Err()
	}
}

func (l *zkLocker) close() { l.conn.Close() }

type zkHeld struct {
	conn *zk.Conn
	m    *zk.Lock
	path string
}

func (h *zkHeld) unlock(context.Context) error { return h.m.Unlock() }

// lost: the lock's parent znode has no child left (its holder's
// ephemeral node went with an expired session).
func (h *zkHeld) lost(context.Context) bool {
	ch, _, err := h.conn.Children(h.path)
	return err != nil || len(ch) == 0
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
