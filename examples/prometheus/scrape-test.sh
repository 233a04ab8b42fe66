#!/usr/bin/env bash
# A real Prometheus scrapes a running Warren with the example alert rules; a message is
# dead-lettered; Prometheus' HTTP API must then show the dead-letter queue's depth and the
# WarrenDeadLetterQueueNotEmpty alert pending.
#   usage: scrape-test.sh WARREN_BIN DEAD_LETTER_EXAMPLE_BIN     (needs Debian's prometheus)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
warren=$1
example=$2
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
amqp=$(free_port); metrics=$(free_port); prom=$(free_port)
pids=()
# Both stop cleanly on SIGTERM, writing into $work as they go: wait for them before removing it.
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$warren" --amqp-listen "127.0.0.1:$amqp" --metrics-listen "127.0.0.1:$metrics" \
    --management-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --data-dir "$work/data" >"$work/warren.log" 2>&1 &
pids+=($!)
# The example config, with fast intervals so the test does not wait 15 s per step.
sed -e "s/15s/1s/g" -e "s/127.0.0.1:15692/127.0.0.1:$metrics/" -e "s#alerts.yml#$here/alerts.yml#" \
    "$here/prometheus.yml" >"$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$amqp") 2>/dev/null && break; sleep 0.1; done
"$example" "amqp://guest:guest@127.0.0.1:$amqp/%2f"

python3 - "$prom" <<'PY'
import json, sys, time, urllib.parse, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/api/v1"
def get(path):
    try:
        with urllib.request.urlopen(base + path, timeout=2) as r:
            return json.load(r)["data"]
    except Exception:
        return None
query = urllib.parse.quote('warren_queue_messages{dead_letter_target="true",queue="example.dlq"}')
depth = alert = None
deadline = time.time() + 60
while time.time() < deadline and not (depth == "1" and alert == "pending"):
    time.sleep(1)
    result = (get("/query?query=" + query) or {}).get("result", [])
    depth = result[0]["value"][1] if result else None
    alerts = (get("/alerts") or {}).get("alerts", [])
    alert = next((a["state"] for a in alerts if a["labels"].get("alertname") == "WarrenDeadLetterQueueNotEmpty"
                  and a["labels"].get("queue") == "example.dlq"), None)
print(f"prometheus sees example.dlq depth={depth}, WarrenDeadLetterQueueNotEmpty={alert}")
sys.exit(0 if depth == "1" and alert == "pending" else 1)
PY
