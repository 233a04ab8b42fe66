#!/usr/bin/env bash
# Sets up and runs every test: format, lints, the core's I/O-freedom, unit/property/integration
# tests, and the user's Go programs against a real `warren` process.
# Idempotent; safe on a fresh machine. The last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warren/target}"
export CARGO_TERM_COLOR=never
# The target dir is reused across runs on one machine: incremental data would grow by
# gigabytes per run (it did, to 20 GB, and filled the disk), and CI builds gain little from it.
export CARGO_INCREMENTAL=0
rm -rf "$CARGO_TARGET_DIR/debug/incremental"
# Each change of a test's crate leaves its previous test executable behind (hundreds of MB
# each with wasmtime linked in): all but the newest of each name go, or the cache fills the disk.
if [ -d "$CARGO_TARGET_DIR/debug/deps" ]; then
    (cd "$CARGO_TARGET_DIR/debug/deps" && ls -t | grep -vE '\.(d|rlib|rmeta|so|o)$' \
        | awk '{p=$0; sub(/-[0-9a-f]+$/,"",p); if (seen[p]++) print $0}' | xargs -r rm -f) || true
fi
steps_passed=0
step() { echo; echo "==> $*"; }
ok() { steps_passed=$((steps_passed + 1)); }

step "toolchain: wasm32-wasip2 target (the core must compile for it)"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
ok

step "packages: Chromium and ChromeDriver (the web UI test drives a real browser)"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver) >/dev/null
fi
ok

step "packages: mosquitto-clients and python3-paho-mqtt (real MQTT clients for the MQTT adapter's tests)"
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import paho.mqtt' 2>/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto-clients python3-paho-mqtt) >/dev/null
fi
ok

step "tools: rabbitmqadmin v2 (the RabbitMQ team's CLI, run against Warren by t78)"
command -v "${CARGO_HOME:-$HOME/.cargo}/bin/rabbitmqadmin" >/dev/null 2>&1 \
    || cargo install -q --locked rabbitmqadmin --version 2.35.0
ok

step "cargo fmt --check"
cargo fmt --all -- --check
ok

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
ok

step "plugins/: guest components for wasm32-wasip2 (fmt, clippy, release build)"
# plugins/target is where configs and tests find the components; on CI it points into the
# cache beside the host's target dir, so the guests are not rebuilt from cold each run.
if [ ! -e plugins/target ]; then
    mkdir -p "$HOME/.cache/warren/plugins-target"
    ln -s "$HOME/.cache/warren/plugins-target" plugins/target
fi
(
    cd plugins
    export CARGO_TARGET_DIR="$PWD/target"
    cargo fmt --all -- --check
    cargo clippy -q --release --all-targets -- -D warnings
    cargo build -q --release
    # The Python and JavaScript examples: installs componentize-py (PyPI) and
    # componentize-js (npm) when missing, then builds what changed.
    bash build-languages.sh
)
ok

step "warren-core and warren-mqtt stay free of I/O crates and build for wasm32-wasip2"
for crate in warren-core warren-mqtt; do
    if cargo tree -p "$crate" -e normal --prefix none | grep -E '^(tokio|quinn|openraft|wasmtime|prometheus|mio) '; then
        echo "$crate depends on an I/O crate" >&2
        exit 1
    fi
done
cargo check -q -p warren-codec -p warren-core -p warren-mqtt --target wasm32-wasip2
ok

step "cargo test (unit, property, integration with lapin and amqprs)"
cargo test --workspace
ok

step "fuzz: frame decoder, field tables, topic matcher, connection machine, MQTT decoder and session, inter-node frames, Raft log (20 s each)"
# cargo-fuzz needs nightly for its sanitizer flags; both are installed once per machine.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q cargo-fuzz --locked
(
    root=$(pwd)
    export CARGO_TARGET_DIR="$HOME/.cache/warren/fuzz-target"
    log=$(mktemp)
    for dir_target in core/codec:frame core/codec:field_table core/codec:topic core/codec:connection \
        core/mqtt:decode core/mqtt:session broker/cluster:wire broker/cluster:raft_log; do
        dir=${dir_target%%:*} target=${dir_target#*:}
        # A crash fails the run and leaves its input in $dir/fuzz/artifacts/.
        if ! (cd "$root/$dir" && cargo +nightly fuzz run -O "$target" -- -max_total_time="${FUZZ_SECONDS:-20}") >"$log" 2>&1; then
            tail -40 "$log" >&2
            exit 1
        fi
        echo "$target: $(grep -E '^Done' "$log")"
    done
    rm -f "$log"
)
ok

step "the user's Go programs against a real warren process"
cargo build -q -p warren --bin warren
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log="$data/warren.log"
"$CARGO_TARGET_DIR/debug/warren" --amqp-listen "127.0.0.1:$port" --management-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$data" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
seed_dir="${SEED_EXAMPLES:-../shared/seed-examples}"
seed_out=$(SEED_QUORUM=1 SEED_WORK="$data/seed" bash "$seed_dir/run.sh" "$port" 2>&1) || true
echo "$seed_out"
# Checks that wait on features of open issues may be listed in SEED_EXPECTED_FAILURES (none
# are now). Anything else failing fails the run; a listed check that passes is reported.
expected_failures="${SEED_EXPECTED_FAILURES-}"
unexpected=$(echo "$seed_out" | sed -n 's/^FAIL //p' | grep -vxF -f <(tr ' ' '\n' <<<"$expected_failures") || true)
if [ -n "$unexpected" ]; then
    echo "seed examples failed: $unexpected" >&2
    tail -20 "$log" >&2
    exit 1
fi
for name in $expected_failures; do
    echo "$seed_out" | grep -qx "PASS $name" && echo "note: seed check '$name' passes now; drop it from SEED_EXPECTED_FAILURES"
done
echo "$seed_out" | grep -qE '^[0-9]+ passed, [0-9]+ failed$' || { echo "seed runner did not finish" >&2; exit 1; }
ok

step "Prometheus: alert rule unit tests, and a real scrape of a running warren"
prom_pkgs=()
command -v promtool >/dev/null 2>&1 || prom_pkgs+=(prometheus)
if [ ${#prom_pkgs[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${prom_pkgs[@]}") >/dev/null
fi
promtool check rules examples/prometheus/alerts.yml
(cd examples/prometheus && promtool test rules alerts_test.yml)
cargo build -q -p warren-examples --bin dead-letter
bash examples/prometheus/scrape-test.sh "$CARGO_TARGET_DIR/debug/warren" "$CARGO_TARGET_DIR/debug/dead-letter"
ok

step "the same scenarios against RabbitMQ, when it is installed"
# Debian's rabbitmq-server, if this machine has it: started for these tests (and stopped after)
# unless one already runs. Without it the comparison halves were skipped above, with a note.
if command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1; then
    started_rabbit=0
    if ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
        rabbitmq-server -detached >/dev/null 2>&1 || true
        started_rabbit=1
    fi
    # await_startup gives up at once while the node is not up at all (it starts slowly on a
    # busy machine): asked again each second, for up to 90 s.
    rabbit_up=0
    for _ in $(seq 90); do
        if timeout 30 rabbitmqctl -q await_startup >/dev/null 2>&1; then rabbit_up=1; break; fi
        sleep 1
    done
    if [ "$rabbit_up" = 1 ]; then
        RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672/%2f" cargo test -q -p warren --test t62_vs_rabbitmq --test t73_definitions
    else
        echo "RabbitMQ did not start: comparisons skipped"
    fi
    [ "$started_rabbit" = 1 ] && { timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true; }
else
    echo "rabbitmq-server is not installed: comparisons skipped"
fi
ok

step "warren stops cleanly on SIGTERM"
kill -TERM $pid
for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then echo "warren did not stop on SIGTERM" >&2; exit 1; fi
wait $pid
grep -q "stopped" "$log"
# Durable state was synced and the stop is marked clean for the next start.
test -f "$data/storage/clean-shutdown" || { echo "no clean-shutdown marker after SIGTERM" >&2; exit 1; }
grep -q "queue index written" "$log"
grep -q "storage synced and closed cleanly" "$log"
trap - EXIT
rm -rf "$data"
ok

echo
echo "$steps_passed passed, 0 failed"
