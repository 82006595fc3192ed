#!/usr/bin/env bash
# bench/idle.sh BIN [SECS]: three idle agents on 127.0.0.1:273x0..; after 15 s to
# settle, CPU-s of the three processes per 30 s and context switches/s.
set -u
BIN=$1; SECS=${2:-40}
D=$(mktemp -d /tmp/idle4.XXXX)
pids=()
for i in 0 1 2; do
  $BIN agent --id n$i --data-dir $D/n$i --bind 127.0.0.1:273${i}0 --gossip 127.0.0.1:273${i}1 --api 127.0.0.1:273${i}2 \
    --join 127.0.0.1:27301,127.0.0.1:27311,127.0.0.1:27321 --bootstrap-expect 3 > $D/n$i.log 2>&1 &
  pids+=($!)
done
sleep 15
tck=$(getconf CLK_TCK)
cpu() { local s=0; for p in "${pids[@]}"; do read -r -a f < /proc/$p/stat; s=$((s + f[13] + f[14])); done; echo $s; }
csw() { local s=0; for p in "${pids[@]}"; do for t in /proc/$p/task/*/status; do v=$(awk '/^voluntary_ctxt_switches|^nonvoluntary_ctxt_switches/{s+=$2} END{print s}' $t 2>/dev/null); s=$((s+${v:-0})); done; done; echo $s; }
c0=$(cpu); x0=$(csw); sleep $SECS; c1=$(cpu); x1=$(csw)
python3 -c "print('cpu_s_per_30s=%.2f ctxsw_per_s=%d' % (($c1-$c0)/$tck*30/$SECS, ($x1-$x0)/$SECS))"
kill "${pids[@]}"; wait 2>/dev/null; rm -rf $D
