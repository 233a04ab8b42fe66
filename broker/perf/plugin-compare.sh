#!/usr/bin/env bash
# End-to-end publish throughput through a plugin exchange beside the same native type, in
# one broker: warren-perf publishes to a topic exchange and to the wasm build of the same
# type (plugins/exchange-topic, routing with warren-core's own code), one consumer each.
#   usage: broker/perf/plugin-compare.sh      (DURATION=seconds per run, default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${DURATION:-10}
cargo build -q --release -p warren --bin warren -p warren-perf --bin warren-perf
(cd plugins && cargo build -q --release)
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/warren.toml" <<TOML
amqp-listen = "127.0.0.1:$port"
management-listen = "127.0.0.1:0"
metrics-listen = "127.0.0.1:0"
quic-listen = "127.0.0.1:0"
data-dir = "$work/data"

[[plugins.exchange]]
type = "x-wasm-topic"
component = "$PWD/plugins/target/wasm32-wasip2/release/exchange_topic.wasm"
TOML
"$target/release/warren" --config "$work/warren.toml" >"$work/warren.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

uri="amqp://guest:guest@127.0.0.1:$port/%2f"
echo "| exchange type | size | msg/s delivered |"
echo "| --- | ---: | ---: |"
for size in 16 1024; do
    for kind in topic x-wasm-topic; do
        json=$("$target/release/warren-perf" throughput --uri "$uri" --size "$size" --autoack \
            --exchange "perf.$kind.$size" --exchange-type "$kind" --routing-key orders.eu \
            --duration "$duration" --json | tail -1)
        rate=$(python3 -c 'import json,sys; print(format(json.loads(sys.argv[1])["consume_rate"], ",.0f"))' "$json")
        echo "| $kind | $size B | $rate |"
    done
done
