#!/usr/bin/env bash
# Starts a local three-node Warren cluster on 127.0.0.1 (n1.toml, n2.toml, n3.toml) and waits;
# Ctrl-C stops all three. Data goes to ./cluster-data, logs to ./cluster-data/nN.log.
#   amqp://guest:guest@127.0.0.1:5701/  (5702, 5703: any node serves the directory; see the README)
#   warren cluster status --config examples/cluster/n2.toml
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
warren=${WARREN:-}
if [ -z "$warren" ]; then
  cargo build --release -p warren --manifest-path "$root/Cargo.toml"
  warren="${CARGO_TARGET_DIR:-$root/target}/release/warren"
fi
mkdir -p cluster-data
# The cookie every member must hold, readable by its owner only.
if [ ! -f cluster-data/cookie ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >cluster-data/cookie)
fi
pids=()
for n in 1 2 3; do
  "$warren" --config "n$n.toml" >"cluster-data/n$n.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
for _ in $(seq 1 100); do
  if "$warren" cluster status --config n1.toml 2>/dev/null | grep -q "metadata leader n"; then
    "$warren" cluster status --config n1.toml
    break
  fi
  sleep 0.2
done
wait
