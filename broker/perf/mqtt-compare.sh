#!/usr/bin/env bash
# Warren's MQTT adapter beside Debian's mosquitto and RabbitMQ's MQTT plugin on this machine:
# the same `warren-perf mqtt` scenarios (one client, warren-mqtt's codec) against each.
#   usage: broker/perf/mqtt-compare.sh        (DURATION=seconds per run, default 5;
#                                              PREFETCH=the adapter's prefetch, default 10)
# mosquitto runs on a free port if installed; RabbitMQ is used if its MQTT plugin answers on
# 1883 (rabbitmq-plugins enable rabbitmq_mqtt; rabbitmq-server -detached).
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${DURATION:-5}
prefetch=${PREFETCH:-10}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build -q --release -p warren --bin warren -p warren-perf --bin warren-perf
(cd plugins && CARGO_TARGET_DIR="$PWD/target" cargo build -q --release -p adapter-mqtt)
target=${CARGO_TARGET_DIR:-target}
perf="$target/release/warren-perf"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
amqp=$(free_port); mqtt=$(free_port); mosq=$(free_port)
cat >"$work/warren.toml" <<TOML
[[plugins.adapter]]
protocol = "mqtt"
component = "$PWD/plugins/target/wasm32-wasip2/release/adapter_mqtt.wasm"
listen = "127.0.0.1:$mqtt"
config = { prefetch = "$prefetch" }
TOML
"$target/release/warren" --config "$work/warren.toml" --amqp-listen "127.0.0.1:$amqp" --metrics-listen 127.0.0.1:0 \
    --management-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --data-dir "$work/data" >"$work/warren.log" 2>&1 &
pids=($!)
brokers=("warren 127.0.0.1:$mqtt $!")
if command -v mosquitto >/dev/null; then
    mosquitto -p "$mosq" >"$work/mosquitto.log" 2>&1 &
    pids+=($!)
    brokers+=("mosquitto 127.0.0.1:$mosq $!")
fi
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
up() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
for _ in $(seq 300); do up "127.0.0.1:$mqtt" && break; sleep 0.1; done
if up 127.0.0.1:1883; then
    brokers+=("rabbitmq 127.0.0.1:1883 $(pgrep -f beam.smp | head -1)")
fi

# First, while each broker is fresh: its heap growth is the connections' alone.
for b in "${brokers[@]}"; do
    read -r broker addr pid <<<"$b"
    printf '%-10s idle connections: ' "$broker"
    "$perf" mqtt-connections --addr "$addr" --count "${CONNECTIONS:-10000}" --pid "$pid" 2>/dev/null | tail -1 || echo "-"
done
echo

scenarios=(
    "QoS 0, 1 publisher → 1 subscriber, 16 B|mqtt --qos 0 --subscribers 1 --duration $duration"
    "QoS 1, 1 → 1, 16 B, 100 in flight|mqtt --qos 1 --subscribers 1 --duration $duration"
    "QoS 0, 1 → 100 subscribers|mqtt --qos 0 --subscribers 100 --duration $duration"
    "QoS 1, 1 → 100 subscribers|mqtt --qos 1 --subscribers 100 --duration $duration"
)
printf '%-40s %-10s %12s %12s %10s %10s\n' scenario broker "publish/s" "deliver/s" "p50 µs" "p99 µs"
for s in "${scenarios[@]}"; do
    name=${s%%|*}; args=${s#*|}
    for b in "${brokers[@]}"; do
        read -r broker addr _ <<<"$b"
        # shellcheck disable=SC2086
        out=$(timeout 90 "$perf" --json $args --addr "$addr" 2>/dev/null || echo '{}')
        python3 - "$name" "$broker" "$out" <<'PY'
import json, sys
name, broker, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3] or "{}")
g = lambda k: out.get(k, "-")
print(f"{name:40} {broker:10} {g('published_per_s'):>12} {g('delivered_per_s'):>12} {g('p50_us'):>10} {g('p99_us'):>10}")
PY
    done
done
