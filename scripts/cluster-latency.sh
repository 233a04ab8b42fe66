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
run() { # port label
  for i in $(seq 1 "$N"); do
    curl -s -o /dev/null -u guest:guest -XPUT -H 'content-type: application/json' \
      -d "{\"password\":\"p$i\",\"tags\":\"\"}" -w '%{time_total}\n' "http://127.0.0.1:$1/api/users/$2-$i"
  done | sort -n | awk -v l="$2" '{a[NR]=$1*1000} END {printf "%-22s median %.2f ms  p99 %.2f ms  (%d writes)\n", l, a[int(NR/2)], a[int(NR*0.99)], NR}'
}
run "$lport" "cluster-leader"
run "$fport" "cluster-follower"
run 15799 "single-node"
queues() { # port label
  for i in $(seq 1 "$N"); do
    curl -s -o /dev/null -u guest:guest -XPUT -H 'content-type: application/json' \
      -d '{"durable":true}' -w '%{time_total}\n' "http://127.0.0.1:$1/api/queues/%2F/$2-$i"
  done | sort -n | awk -v l="$2 queue" '{a[NR]=$1*1000} END {printf "%-22s median %.2f ms  p99 %.2f ms  (%d declares)\n", l, a[int(NR/2)], a[int(NR*0.99)], NR}'
}
queues "$lport" "cluster-leader"
queues "$fport" "cluster-follower"
queues 15799 "single-node"
