#!/usr/bin/env bash
# sitting.sh OUT.md [DURATION]: one sitting of the side-by-side benchmark.
# Builds sbs and leasenode, then for each system in $SYSTEMS (default
# "leasenode etcd zookeeper"), one at a time: starts a fresh 3-node cluster
# (cluster.sh), runs every workload (sbs -workload all), stops the cluster
# and removes its data. Measures the disk's fsync floor at the start and
# the end, and writes OUT.md: the command, the date, the floors and the
# table (sbs -table), with each system's JSON report beside it
# (OUT.md.SYSTEM.json). DURATION (default 20s) is the length of
# uncontended and handoff and of each failover kill cycle; keepalive holds
# for $HOLD (30s), idle watches for $IDLE (30s), failover kills $KILLS (3)
# times. Other sbs flags go in $SBS_FLAGS.
#
# Needs Debian's etcd-server (etcd 3.4) and zookeeperd (ZooKeeper 3.8, with
# a JVM), and Go. Run it on a quiet machine: every number here is
# sensitive to other load.
set -euo pipefail

out=${1:?usage: sitting.sh OUT.md [DURATION]}
dur=${2:-20s}
systems=${SYSTEMS:-leasenode etcd zookeeper}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sbs-sitting.XXXXXX")
cluster_dir=""
cleanup() {
	if [ -n "$cluster_dir" ] && [ -n "${cur:-}" ]; then "$here/cluster.sh" stop "$cur" "$cluster_dir" || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "sitting.sh: building into $work" >&2
(cd "$here" && go build -o "$work/bin/sbs" ./cmd/sbs)
(cd "$root" && go build -o "$work/bin/leasenode" ./cmd/leasenode)
export SBS_BIN=$work/bin/sbs LEASENODE_BIN=$work/bin/leasenode

# fsync floor: ms per 4 KiB O_DSYNC write, on the disk the clusters use.
fsync_floor() {
	local f="$work/fsync.probe" t0 t1
	t0=$(date +%s%N)
	dd if=/dev/zero of="$f" bs=4k count=2000 oflag=dsync 2>/dev/null
	t1=$(date +%s%N)
	rm -f "$f"
	awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 2000 / 1e6 }'
}

version() {
	case $1 in
	etcd) etcd --version 2>/dev/null | awk '/etcd Version/ { print "etcd " $3 }' ;;
	zookeeper) dpkg-query -W -f='ZooKeeper ${Version}' zookeeper 2>/dev/null || echo ZooKeeper ;;
	leasenode) echo "leasenode $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo dev)" ;;
	esac
}

floor_start=$(fsync_floor)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
reports=()
for cur in $systems; do
	cluster_dir="$work/cluster-$cur"
	echo "sitting.sh: $cur: starting a fresh cluster" >&2
	"$here/cluster.sh" start "$cur" "$cluster_dir"
	# shellcheck disable=SC2086 # SBS_FLAGS is a list of flags
	"$work/bin/sbs" -system "$cur" -cluster "$cluster_dir" -cluster-script "$here/cluster.sh" \
		-workload all -duration "$dur" -hold "${HOLD:-30s}" -idle "${IDLE:-30s}" -kills "${KILLS:-3}" \
		-version-label "$(version "$cur")" -json "$out.$cur.json" ${SBS_FLAGS:-}
	"$here/cluster.sh" stop "$cur" "$cluster_dir"
	rm -rf "$cluster_dir"
	cluster_dir=""
	reports+=("$out.$cur.json")
done
floor_end=$(fsync_floor)

{
	echo "# Side-by-side sitting, $started"
	echo
	echo "Command: \`SYSTEMS=\"$systems\" HOLD=${HOLD:-30s} IDLE=${IDLE:-30s} KILLS=${KILLS:-3} bench/sidebyside/sitting.sh $out $dur\`${SBS_FLAGS:+ with SBS_FLAGS=\"$SBS_FLAGS\"}"
	echo
	echo "Machine: $(nproc) cores, $(uname -sr); fsync floor (dd bs=4k count=2000 oflag=dsync) ${floor_start} ms per write at the start, ${floor_end} ms at the end."
	echo -n "Versions:"
	for s in $systems; do echo -n " $(version "$s");"; done
	echo
	echo
	echo "Three processes per system on 127.0.0.1, default timing, fsync on; each system's own Go client (etcd clientv3 concurrency.Mutex, go-zookeeper zk.NewLock, lease.Dial). Server CPU and RSS are summed over the three server processes (/proc/PID/stat utime+stime, VmRSS)."
	echo
	"$work/bin/sbs" -table "${reports[@]}"
} >"$out"
echo "sitting.sh: wrote $out" >&2
