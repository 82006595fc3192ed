#!/usr/bin/env bash
# cluster.sh: start, stop and restart 3-node clusters of leasenode, etcd
# and ZooKeeper on 127.0.0.1 for the side-by-side benchmark.
#
#   cluster.sh start   SYSTEM DIR      start 3 nodes (data, logs, pids in DIR), wait until ready
#   cluster.sh stop    SYSTEM DIR      SIGTERM every node, SIGKILL after 10 s
#   cluster.sh restart SYSTEM DIR N    start node N (1-3) again after it was killed
#   cluster.sh endpoints SYSTEM        print the client endpoints, comma-separated
#
# SYSTEM is leasenode, etcd or zookeeper. Every port is below 32768 (outside
# Linux's ephemeral range, so no client socket can take one):
#   etcd       client 23379/23381/23383, peer 23380/23382/23384
#   zookeeper  client 24181-24183, quorum 24888-24890, election 25888-25890
#   leasenode  node N: raft 264N0, gossip 264N1, api 264N2 (N = 0, 1, 2)
# Each node is its own process with default timing and fsync on (each
# system's defaults). leasenode's binary is $LEASENODE_BIN (default
# DIR/../leasenode, else `leasenode` on PATH); ZooKeeper runs Debian's jars
# from /usr/share/java with $ZK_HEAP (default -Xmx256m). $LEASENODE_FLAGS
# adds flags to every leasenode agent (e.g. --enable-pprof, for profiles).
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop|restart|endpoints SYSTEM [DIR] [N]}
sys=${2:?system: leasenode, etcd or zookeeper}

endpoints() {
	case $1 in
	etcd) echo 127.0.0.1:23379,127.0.0.1:23381,127.0.0.1:23383 ;;
	zookeeper) echo 127.0.0.1:24181,127.0.0.1:24182,127.0.0.1:24183 ;;
	leasenode) echo 127.0.0.1:26402,127.0.0.1:26412,127.0.0.1:26422 ;;
	*) echo "unknown system $1" >&2; exit 2 ;;
	esac
}

if [ "$cmd" = endpoints ]; then endpoints "$sys"; exit 0; fi
dir=${3:?data directory}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# start_node N: start node N (1-3) in the background, its pid in DIR/nodeN.pid.
start_node() {
	local n=$1 i=$(($1 - 1)) d="$dir/node$1"
	mkdir -p "$d"
	case $sys in
	etcd)
		local cp=$((23379 + 2 * i)) pp=$((23380 + 2 * i))
		local cluster=n1=http://127.0.0.1:23380,n2=http://127.0.0.1:23382,n3=http://127.0.0.1:23384
		local state=new
		[ -d "$d/data/member" ] && state=existing
		nohup etcd --name "n$n" --data-dir "$d/data" \
			--listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
			--listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
			--initial-cluster "$cluster" --initial-cluster-state "$state" \
			--initial-cluster-token sbs-etcd --log-level warn \
			>>"$d/log" 2>&1 </dev/null &
		;;
	zookeeper)
		mkdir -p "$d/data"
		echo "$n" >"$d/data/myid"
		cat >"$d/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$d/data
clientPort=$((24180 + n))
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,mntr,ruok
server.1=127.0.0.1:24888:25888
server.2=127.0.0.1:24889:25889
server.3=127.0.0.1:24890:25890
EOF
		local cpath=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
		# shellcheck disable=SC2086 # ZK_HEAP is a list of JVM options
		nohup java ${ZK_HEAP:--Xmx256m} -Dzookeeper.log.dir="$d" -Dslf4j.internal.verbosity=WARN \
			-Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$cpath" \
			org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" \
			>>"$d/log" 2>&1 </dev/null &
		;;
	leasenode)
		# The binary: $LEASENODE_BIN, else the one the cluster was started
		# with (a restart), else DIR/../leasenode, else PATH's.
		local bin=${LEASENODE_BIN:-}
		[ -z "$bin" ] && [ -f "$dir/leasenode.bin" ] && bin=$(cat "$dir/leasenode.bin")
		if [ -z "$bin" ]; then
			if [ -x "$dir/../leasenode" ]; then bin="$dir/../leasenode"; else bin=$(command -v leasenode || echo leasenode); fi
		fi
		echo "$bin" >"$dir/leasenode.bin"
		local bootstrap=(--bootstrap-expect 3)
		# A restarted node finds its cluster in its data dir.
		[ -n "$(ls -A "$d/data" 2>/dev/null)" ] && bootstrap=()
		# shellcheck disable=SC2086 # LEASENODE_FLAGS is a list of flags
		nohup "$bin" agent --id "n$i" --data-dir "$d/data" \
			--bind "127.0.0.1:264${i}0" --gossip "127.0.0.1:264${i}1" --api "127.0.0.1:264${i}2" \
			--join 127.0.0.1:26401,127.0.0.1:26411,127.0.0.1:26421 "${bootstrap[@]}" --log-level warn \
			${LEASENODE_FLAGS:-} >>"$d/log" 2>&1 </dev/null &
		;;
	*) echo "unknown system $sys" >&2; exit 2 ;;
	esac
	echo $! >"$d/pid"
}

# ready: the cluster has a leader and answers a client (up to 60 s).
ready() {
	local sbs=${SBS_BIN:-$(dirname "$0")/sbs}
	"$sbs" -system "$sys" -cluster "$dir" -wait-ready 60s >/dev/null
}

stop_node() {
	local pidf="$dir/node$1/pid"
	[ -f "$pidf" ] || return 0
	local pid
	pid=$(cat "$pidf")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidf"
}

case $cmd in
start)
	for n in 1 2 3; do start_node "$n"; done
	if ! ready; then
		echo "cluster.sh: $sys did not become ready; logs in $dir/node*/log" >&2
		tail -n 5 "$dir"/node*/log >&2 || true
		exit 1
	fi
	;;
restart)
	n=${4:?node 1-3}
	stop_node "$n"
	start_node "$n"
	;;
stop)
	for n in 1 2 3; do stop_node "$n"; done
	;;
*)
	echo "unknown command $cmd" >&2
	exit 2
	;;
esac
