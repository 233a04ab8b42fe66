#!/usr/bin/env bash
# Metadata write latency: PUT /api/users/uN (201) and PUT /api/queues/%2F/qN (a durable queue
# declared through the API's AMQP session: declare -> declare-ok) on a 3-node cluster (on the
# leader and on a follower) and on a single node; median and p99 of N writes, in ms.
set -euo pipefail
W=${WARREN:-${CARGO_TARGET_DIR:-$HOME/.cache/warren/target}/release/warren}
N=${N:-300}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); cd "$work" && mkdir -p cluster-data
cp "$here"/../examples/cluster/n{1,2,3}.toml .
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > cluster-data/cookie)
pids=()
for n in 1 2 3; do "$W" --config n$n.toml > cluster-data/n$n.log 2>&1 & pids+=($!); done
"$W" --data-dir single --amqp-listen 127.0.0.1:5799 --management-listen 127.0.0.1:15799 --metrics-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 > single.log 2>&1 & pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do "$W" cluster status --config n1.toml 2>/dev/null | grep -q "metadata leader n" && break; sleep 0.2; done
sleep 2
leader=$("$W" cluster status --config n1.toml --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
lport=$((15700 + ${leader#n})); fport=$((15700 + (${leader#n} % 3) + 1))
run() { # port label path body: N PUTs of path-1..path-N, their median and p99
  for i in $(seq 1 "$N"); do
    curl -s -o /dev/null -u guest:guest -XPUT -H 'content-type: application/json' \
      -d "$4" -w '%{time_total}\n' "http://127.0.0.1:$1$3-$i"
  done | sort -n | awk -v l="$2" '{a[NR]=$1*1000} END {printf "%-22s median %.2f ms  p99 %.2f ms  (%d writes)\n", l, a[int(NR/2)], a[int(NR*0.99)], NR}'
}
user='{"password":"p","tags":""}'
run "$lport" "cluster-leader" "/api/users/leader" "$user"
run "$fport" "cluster-follower" "/api/users/follower" "$user"
run 15799 "single-node" "/api/users/single" "$user"
queue='{"durable":true}'
run "$lport" "cluster-leader queue" "/api/queues/%2F/leader" "$queue"
run "$fport" "cluster-follower queue" "/api/queues/%2F/follower" "$queue"
run 15799 "single-node queue" "/api/queues/%2F/single" "$queue"
