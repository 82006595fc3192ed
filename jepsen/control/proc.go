package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcState is the state of a managed process.
type ProcState string

// Process states.
const (
	Stopped ProcState = "stopped"
	Running ProcState = "running"
	Paused  ProcState = "paused"
)

// Proc is one managed OS process: started (optionally inside a network
// namespace) with its stdout and stderr appended to a log file, killed,
// stopped, paused and resumed, and started again with the same or new
// arguments. It is safe for concurrent use.
type Proc struct {
	// Name identifies the process in logs and errors.
	Name string
	// Netns, if set, is the network namespace to run in.
	Netns string
	// LogPath receives stdout and stderr (appended across restarts).
	LogPath string
	// Env is added to the harness's environment.
	Env []string
	// Ready, if set, is called with each stdout line until it returns
	// true; Start waits for that.
	Ready func(line string) bool

	mu    sync.Mutex
	cmd   *exec.Cmd
	state ProcState
	done  chan struct{}
	err   error // exit status of the last run
	argv  []string
}

// ErrNotRunning is returned when a signal is sent to a stopped process.
var ErrNotRunning = errors.New("process not running")

// Start runs argv and waits (up to timeout) for Ready. The process gets
// its own process group and is killed if the harness dies.
func (p *Proc) Start(ctx context.Context, argv []string, timeout time.Duration) error {
	p.mu.Lock()
	if p.state == Running || p.state == Paused {
		p.mu.Unlock()
		return fmt.Errorf("%s: already running", p.Name)
	}
	full := argv
	if p.Netns != "" {
		full = append([]string{"ip", "netns", "exec", p.Netns}, argv...)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	fmt.Fprintf(logf, "=== jepsen %s: start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(full, " "))
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		p.mu.Unlock()
		return err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.mu.Unlock()
		return fmt.Errorf("%s: start: %w", p.Name, err)
	}
	ready := make(chan struct{})
	readyFn := p.Ready
	if readyFn == nil {
		close(ready)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		signalled := readyFn == nil
		for sc.Scan() {
			line := sc.Text()
			io.WriteString(logf, line+"\n")
			if !signalled && readyFn(line) {
				signalled = true
				close(ready)
			}
		}
		io.Copy(logf, stdout)
	}()
	done := make(chan struct{})
	p.cmd, p.state, p.done, p.err, p.argv = cmd, Running, done, nil, argv
	p.mu.Unlock()
	go func() {
		<-copied
		err := cmd.Wait()
		fmt.Fprintf(logf, "=== jepsen %s: exit %v\n", time.Now().Format(time.RFC3339Nano), err)
		logf.Close()
		p.mu.Lock()
		if p.cmd == cmd {
			p.state, p.err = Stopped, err
		}
		p.mu.Unlock()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("%s exited before it was ready: %v (see %s)", p.Name, p.Err(), p.LogPath)
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s not ready within %v (see %s)", p.Name, timeout, p.LogPath)
	case <-ctx.Done():
		p.Kill()
		return ctx.Err()
	}
}

// Argv returns the arguments of the last start.
func (p *Proc) Argv() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.argv...)
}

// State returns the process state.
func (p *Proc) State() ProcState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == "" {
		return Stopped
	}
	return p.state
}

// Pid returns the process id, or 0 when stopped.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.state == Stopped {
		return 0
	}
	return p.cmd.Process.Pid
}

// Err returns the exit status of the last run (nil while running).
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Done returns a channel closed when the current run exits.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

func (p *Proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.state == Stopped {
		return ErrNotRunning
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil {
		if errors.Is(err, ErrNotRunning) {
			return nil
		}
		return err
	}
	<-p.Done()
	return nil
}

// Stop sends SIGTERM (after SIGCONT, in case it is paused), waits up to
// grace for a clean exit, then kills it.
func (p *Proc) Stop(grace time.Duration) error {
	p.signal(syscall.SIGCONT)
	if err := p.signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, ErrNotRunning) {
			return nil
		}
		return err
	}
	select {
	case <-p.Done():
		return nil
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", p.Name, grace)
	}
}

// Pause sends SIGSTOP and waits (up to a second) until the kernel reports
// the process stopped.
func (p *Proc) Pause() error {
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	p.mu.Lock()
	if p.state == Running {
		p.state = Paused
	}
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	for i := 0; i < 100 && procStatus(pid) != 'T'; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// procStatus returns the state letter of pid from /proc (0 if unknown).
func procStatus(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// Resume sends SIGCONT.
func (p *Proc) Resume() error {
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	p.mu.Lock()
	if p.state == Paused {
		p.state = Running
	}
	p.mu.Unlock()
	return nil
}
