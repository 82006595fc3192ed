#!/usr/bin/env bash
# Smoke test of the image: builds it, starts a 3-node cluster from it
# (host network, on 127.0.0.{41,42,43}, one port set per node), joined by
# ONE DNS name that resolves to all three addresses (as a Kubernetes
# headless Service does), with the cluster key from the environment (as
# from a Secret) and a named volume per node. Checks: every container
# turns healthy by its HEALTHCHECK (leasenode health), status shows one
# leader and the image's version on every node, a lease is taken,
# `docker stop` of the leader exits 0 and hands over leadership, and the
# node restarted on its volume serves the lease with the same token.
# Needs a running Docker engine; cleans up after itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image=leasenode:smoke
port=27400
VERSION=v0.0.0-smoke "$here/build.sh" "$image" >/tmp/leasenode-smoke-build.log 2>&1 ||
	{ tail -20 /tmp/leasenode-smoke-build.log; exit 1; }
cli="$(mktemp -d)/leasenode"
(cd "$here/../.." && go build -o "$cli" ./cmd/leasenode)
names=(lnsmoke1 lnsmoke2 lnsmoke3)
cleanup() {
	for n in "${names[@]}"; do docker rm -f "$n" >/dev/null 2>&1 || true; docker volume rm "$n-data" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
cleanup
key="$(head -c 32 /dev/urandom | base64)"
hosts=()
for i in 1 2 3; do hosts+=(--add-host "leasenode-peers:127.0.0.4$i"); done
start() {
	local i=$1
	docker run -d --name "lnsmoke$i" --network host "${hosts[@]}" -v "lnsmoke$i-data:/data" \
		-e LEASENODE_CLUSTER_KEY="$key" -e LEASENODE_ADDR="127.0.0.4$i:$((port + 2))" \
		"$image" agent --id "n$i" --bind "127.0.0.4$i:$port" --gossip "127.0.0.4$i:$((port + 1))" \
		--api "127.0.0.4$i:$((port + 2))" --join "leasenode-peers:$((port + 1))" --bootstrap-expect 3 --timing fast >/dev/null
}
healthy() { # wait until container $1 is healthy (HEALTHCHECK every 10 s)
	for _ in $(seq 1 60); do
		[ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ] && return 0
		sleep 1
	done
	echo "smoke: $1 not healthy:"; docker logs "$1" 2>&1 | tail -20; return 1
}
for i in 1 2 3; do start "$i"; done
for n in "${names[@]}"; do healthy "$n"; done
addrs="127.0.0.41:$((port + 2)),127.0.0.42:$((port + 2)),127.0.0.43:$((port + 2))"
"$cli" status --addr "$addrs" | tee /tmp/leasenode-smoke-status.txt
[ "$(grep -c 'v0.0.0-smoke' /tmp/leasenode-smoke-status.txt)" = 3 ] || { echo "smoke: not every node reports the image's version"; exit 1; }
token="$("$cli" acquire smoke/key --ttl 60s --addr "$addrs" -o json 2>/dev/null | sed -n 's/.*"token": \([0-9]*\).*/\1/p')"
leader="$("$cli" status --addr "$addrs" -o json | tr -d ' \n' | sed -n 's/.*"id":"n\([0-9]\)","api":"[^"]*","raft_state":"Leader".*/\1/p')"
[ -n "$token" ] && [ -n "$leader" ] || { echo "smoke: no token ($token) or leader ($leader)"; exit 1; }
docker stop -t 15 "lnsmoke$leader" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "lnsmoke$leader")" = 0 ] || { echo "smoke: docker stop did not exit 0"; exit 1; }
docker start "lnsmoke$leader" >/dev/null
healthy "lnsmoke$leader"
# get -o json carries the first holding's fields and every holding: the
# first "token" is the holder's.
got="$("$cli" get smoke/key --addr "127.0.0.4$leader:$((port + 2))" -o json | sed -n 's/.*"token": \([0-9]*\).*/\1/p' | head -n 1)"
[ "$got" = "$token" ] || { echo "smoke: after the restart token $got, want $token"; exit 1; }
docker run --rm --entrypoint /leasenode "$image" version | grep -q 'v0.0.0-smoke'
echo "smoke: image $image: 3 nodes healthy, joined by one DNS name, leader n$leader stopped (exit 0) and restarted on its volume, lease token $token kept"
