// Package buildinfo says which build of leasenode is running: the module
// version, the VCS revision it was built from (and whether the work tree
// had uncommitted changes), and the Go version, all read from the binary's
// own build information (runtime/debug.ReadBuildInfo), which `go build`
// stamps. `leasenode version`, the leasenode_build_info metric and the
// Status RPC (so `leasenode status` and `members`) report it.
//
// It owns nothing else. A release build may pin the version with
//
//	go build -ldflags "-X github.com/leasenode/leasenode/internal/buildinfo.version=v1.2.3" ./cmd/leasenode
//
// (and .revision=COMMIT, .modified=true), which win over the stamped module version (a build from a checkout is
// stamped with a pseudo-version such as v0.0.0-20260101120000-abcdef123456,
// or "(devel)" when no VCS information is available).
package buildinfo

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// ModulePath is the module whose version is reported.
const ModulePath = "github.com/leasenode/leasenode"

// version, revision and modified ("true") are set by the linker (-X) for
// builds whose VCS information Go cannot stamp (a container build without
// .git, a git worktree); empty otherwise.
var version, revision, modified string

// Info describes one build.
type Info struct {
	// Version is the module version: the -X override, else the version
	// `go build` stamped ("(devel)" when unknown).
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from ("" if the
	// build carried no VCS information, as under `go test` or `go run`).
	Revision string `json:"revision,omitempty"`
	// Time is the commit time of Revision (RFC 3339), if known.
	Time string `json:"time,omitempty"`
	// Modified reports uncommitted changes in the work tree at build time.
	// In JSON it appears only with Revision: without VCS information a
	// false would claim a clean tree nobody checked.
	Modified bool `json:"modified"`
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string `json:"go_version"`
	// Platform is GOOS/GOARCH.
	Platform string `json:"platform"`
}

var (
	once   sync.Once
	cached Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() { cached = read(debug.ReadBuildInfo) })
	return cached
}

// read builds an Info from what readBuildInfo returns (a parameter so
// tests can feed it).
func read(readBuildInfo func() (*debug.BuildInfo, bool)) Info {
	in := Info{Version: "(devel)", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := readBuildInfo(); ok {
		if bi.GoVersion != "" {
			in.GoVersion = bi.GoVersion
		}
		mod := &bi.Main
		if mod.Path != ModulePath {
			// leasenode embedded in another program: report the version
			// of the leasenode module it depends on.
			for _, d := range bi.Deps {
				if d.Path == ModulePath {
					mod = d
					if d.Replace != nil && d.Replace.Version != "" {
						mod = d.Replace
					}
					break
				}
			}
		}
		if mod.Version != "" && (mod.Path == ModulePath || mod != &bi.Main) {
			in.Version = mod.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.time":
				in.Time = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		in.Version = version
	}
	if revision != "" {
		in.Revision = revision
	}
	if modified != "" {
		in.Modified = modified == "true"
	}
	return in
}

// MarshalJSON writes in's fields, with "modified" only when "revision" is
// there too (see Modified).
func (in Info) MarshalJSON() ([]byte, error) {
	type plain Info // without this method
	out := struct {
		plain
		Modified *bool `json:"modified,omitempty"`
	}{plain: plain(in)}
	if in.Revision != "" {
		out.Modified = &in.Modified
	}
	return json.Marshal(out)
}

// Short returns the version with an abbreviated revision, for one column
// of a table: "v1.2.3", or "(devel)+abcdef123456" (with "-dirty" when the
// tree was modified) when the version alone does not name the commit.
func (in Info) Short() string {
	s := in.Version
	if in.Revision != "" && (s == "(devel)" || s == "") {
		rev := in.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += "+" + rev
	}
	if in.Modified && !strings.HasSuffix(s, "+dirty") { // go 1.24+ stamps "+dirty" itself
		s += "-dirty"
	}
	return s
}

// String is the one-line form `leasenode version` prints.
func (in Info) String() string {
	rev := in.Revision
	if rev == "" {
		rev = "unknown"
	}
	if in.Modified {
		rev += " (dirty: uncommitted changes)"
	}
	return fmt.Sprintf("leasenode %s\n  revision %s\n  built with %s for %s", in.Version, rev, in.GoVersion, in.Platform)
}
