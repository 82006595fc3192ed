package buildinfo

import (
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	cases := []struct {
		name      string
		bi        *debug.BuildInfo
		override  string
		version   string
		short     string
		revision  string
		modified  bool
		goVersion string
	}{
		{"no build info", nil, "", "(devel)", "(devel)", "", false, ""},
		{"stamped checkout", &debug.BuildInfo{GoVersion: "go1.26.8",
			Main:     debug.Module{Path: ModulePath, Version: "v0.0.0-20260101120000-abcdef123456+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abcdef1234567890"}, {Key: "vcs.modified", Value: "true"}}},
			"", "v0.0.0-20260101120000-abcdef123456+dirty", "v0.0.0-20260101120000-abcdef123456+dirty", "abcdef1234567890", true, "go1.26.8"},
		{"devel with revision", &debug.BuildInfo{Main: debug.Module{Path: ModulePath, Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abcdef1234567890"}, {Key: "vcs.modified", Value: "true"}}},
			"", "(devel)", "(devel)+abcdef123456-dirty", "abcdef1234567890", true, ""},
		{"embedded as a dependency", &debug.BuildInfo{Main: debug.Module{Path: "example.com/app", Version: "v9.9.9"},
			Deps: []*debug.Module{{Path: ModulePath, Version: "v1.2.3"}}}, "", "v1.2.3", "v1.2.3", "", false, ""},
		{"linker override", &debug.BuildInfo{Main: debug.Module{Path: ModulePath, Version: "(devel)"}}, "v2.0.0", "v2.0.0", "v2.0.0", "", false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			old := version
			version = c.override
			defer func() { version = old }()
			in := read(func() (*debug.BuildInfo, bool) { return c.bi, c.bi != nil })
			if in.Version != c.version || in.Short() != c.short || in.Revision != c.revision || in.Modified != c.modified {
				t.Errorf("got %+v (short %q), want version %q short %q revision %q modified %v", in, in.Short(), c.version, c.short, c.revision, c.modified)
			}
			if c.goVersion != "" && in.GoVersion != c.goVersion {
				t.Errorf("go version %q, want %q", in.GoVersion, c.goVersion)
			}
			if !strings.Contains(in.String(), in.Version) || !strings.Contains(in.String(), in.GoVersion) {
				t.Errorf("String() %q lacks version or Go version", in.String())
			}
		})
	}
}

// JSON says "modified" only beside "revision": a build without VCS
// information does not know whether its tree was clean.
func TestJSONModifiedOnlyWithRevision(t *testing.T) {
	for _, c := range []struct {
		in   Info
		want string // the "modified" value, "" for none
	}{
		{Info{Version: "(devel)"}, ""},
		{Info{Version: "(devel)", Revision: "abc", Modified: false}, "false"},
		{Info{Version: "(devel)", Revision: "abc", Modified: true}, "true"},
	} {
		b, err := json.Marshal(c.in)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if got := string(m["modified"]); got != c.want || string(m["version"]) != `"(devel)"` {
			t.Errorf("%+v: %s; want modified %q and the version", c.in, b, c.want)
		}
	}
}
