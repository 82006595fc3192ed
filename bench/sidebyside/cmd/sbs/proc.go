package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's utime and stime
// (100 on every Linux this runs on).
const clockTicks = 100

// nodePID reads node i's (0-2) pid file under the cluster directory.
func (c *config) nodePID(i int) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("node%d", i+1), "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// serverCPU sums utime+stime of the three server processes, in seconds.
func (c *config) serverCPU() (float64, error) {
	if c.dir == "" {
		return 0, fmt.Errorf("no -cluster directory: cannot find the server processes")
	}
	var sum float64
	for i := range 3 {
		pid, err := c.nodePID(i)
		if err != nil {
			return 0, err
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		// Fields after the command name (which may hold spaces): state is
		// field 3, utime 14, stime 15.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		sum += (ut + st) / clockTicks
	}
	return sum, nil
}

// serverRSS sums VmRSS of the three server processes, in MiB.
func (c *config) serverRSS() (float64, error) {
	var kb float64
	for i := range 3 {
		pid, err := c.nodePID(i)
		if err != nil {
			return 0, err
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v)
				n, _ := strconv.ParseFloat(f[0], 64)
				kb += n
			}
		}
	}
	return round(kb/1024, 1), nil
}
