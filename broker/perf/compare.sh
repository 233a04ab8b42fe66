#!/usr/bin/env bash
# Warren beside RabbitMQ on this machine: the same warren-perf scenarios against each broker,
# alternating, and one table with both figures and the ratio Warren/RabbitMQ.
#   usage: broker/perf/compare.sh            (DURATION=seconds per run, default 10;
#          SCENARIOS=quorum for quorum queues)
# RabbitMQ is Debian's rabbitmq-server on 5672, started here if installed and not running.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${DURATION:-10}
# 2 000 connections need file descriptors, in the tool and in both brokers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build -q --release -p warren --bin warren -p warren-perf --bin warren-perf
target=${CARGO_TARGET_DIR:-target}
perf="$target/release/warren-perf"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$target/release/warren" --amqp-listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 \
    --management-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --data-dir "$work/data" >"$work/warren.log" 2>&1 &
warren_pid=$!
cleanup() { kill "$warren_pid" 2>/dev/null || true; wait "$warren_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

brokers=("warren amqp://guest:guest@127.0.0.1:$port/%2f $warren_pid")
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
# Debian's wrapper switches to the rabbitmq user with su, whose PAM limits reset the soft
# descriptor limit to 1024; raise it inside the su command instead.
start_rabbit() {
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && ulimit -n $(ulimit -Hn); /usr/lib/rabbitmq/bin/rabbitmq-server -detached" >/dev/null 2>&1 || true
    else
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
}
rabbit_fds() { awk '/Max open files/ {print $4}' "/proc/$(pgrep -f beam.smp | head -1)/limits" 2>/dev/null || echo 0; }
# A RabbitMQ started with a small descriptor limit cannot take scenario (e): restart it here.
if rabbit_up && [ "$(rabbit_fds)" -lt 4096 ] && command -v rabbitmqctl >/dev/null; then
    echo "RabbitMQ runs with $(rabbit_fds) file descriptors; restarting it with $(ulimit -n)" >&2
    rabbitmqctl stop >/dev/null 2>&1 || true
    for _ in $(seq 100); do rabbit_up || break; sleep 0.2; done
fi
if ! rabbit_up && command -v rabbitmq-server >/dev/null; then
    start_rabbit
    for _ in $(seq 300); do rabbit_up && break; sleep 0.2; done
fi
if rabbit_up; then
    brokers+=("rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f $(pgrep -f beam.smp | head -1)")
    rabbit_version=$(rabbitmqctl version 2>/dev/null || echo "?")
else
    echo "RabbitMQ is not installed or did not start: Warren's figures only" >&2
    rabbit_version=""
fi

# name | warren-perf arguments | summary field to compare. SCENARIOS=quorum measures quorum
# queues instead (RabbitMQ runs a single-node quorum queue too): persistent with confirms,
# every message fsynced before its confirm on both.
if [ "${SCENARIOS:-classic}" = quorum ]; then
    qq="--queue-args x-queue-type=quorum --persistent"
    scenarios=(
        "q1) quorum, 16 B, confirms 256, prefetch 1000, multi-ack 100|throughput --size 16 $qq --confirm 256 --prefetch 1000 --multi-ack 100 --duration $duration|consume_rate"
        "q2) quorum, 1 KiB, confirms 256, prefetch 1000, multi-ack 100|throughput --size 1024 $qq --confirm 256 --prefetch 1000 --multi-ack 100 --duration $duration|consume_rate"
        "q3) quorum, 16 B, 4 producers 4 consumers, confirms 256|throughput --size 16 $qq --producers 4 --consumers 4 --confirm 256 --prefetch 1000 --multi-ack 100 --duration $duration|consume_rate"
        "q4) quorum, latency at 2 000 msg/s, p99 in µs (lower is better)|latency --size 16 $qq --rate 2000 --duration $duration|latency_p99_us"
    )
else
    scenarios=(
    "a) transient 16 B, 1 producer 1 consumer, auto-ack|throughput --size 16 --autoack --duration $duration|consume_rate"
    "b) transient 1 KiB, 1 producer 1 consumer, auto-ack|throughput --size 1024 --autoack --duration $duration|consume_rate"
    "c) persistent 16 B, confirms 256, prefetch 1000, multi-ack 100|throughput --size 16 --persistent --confirm 256 --prefetch 1000 --multi-ack 100 --duration $duration|consume_rate"
    "d) latency at 10 000 msg/s, p99 in µs (lower is better)|latency --size 16 --rate 10000 --autoack --duration $duration|latency_p99_us"
    "e) 2 000 idle connections, heap octets per connection (lower is better)|connections --count 2000|bytes_per_connection"
    "f) fan-out to 10 queues through a topic exchange (deliveries/s)|throughput --size 16 --autoack --consumers 10 --exchange perf.fanout --routing-key a.b --duration $duration|consume_rate"
    )
fi

results="$work/results"
: >"$results"
for s in "${scenarios[@]}"; do
    IFS='|' read -r name args field <<<"$s"
    for b in "${brokers[@]}"; do
        read -r label uri pid <<<"$b"
        extra=()
        [[ $args == connections* ]] && extra=(--pid "$pid")
        # shellcheck disable=SC2086
        line=$("$perf" $args --uri "$uri" "${extra[@]}" --json 2>/dev/null | tail -1) || line='{}'
        echo "$name|$label|$field|$line" >>"$results"
        echo "$label: $name: $line" >&2
    done
done

python3 - "$results" "$rabbit_version" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    name, broker, field, js = line.rstrip("\n").split("|", 3)
    try:
        j = json.loads(js)
    except ValueError:
        j = {}
    v = j.get(field)
    # A broker that stopped taking connections: say how many it took.
    short = f" ({j['opened']} opened)" if j.get("error") else ""
    rows.setdefault(name, {})[broker] = (v, short)
rv = sys.argv[2]
print(f"| scenario | Warren | RabbitMQ {rv} | Warren/RabbitMQ |")
print("| --- | ---: | ---: | ---: |")
fmt = lambda v: "-" if v[0] is None else f"{v[0]:,.0f}{v[1]}"
for name, r in rows.items():
    w, q = r.get("warren", (None, "")), r.get("rabbitmq", (None, ""))
    ratio = f"{w[0] / q[0]:.2f}x" if w[0] and q[0] else "-"
    print(f"| {name} | {fmt(w)} | {fmt(q)} | {ratio} |")
PY
