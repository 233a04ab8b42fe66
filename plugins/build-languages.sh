#!/usr/bin/env bash
# Builds the example plugins written in Python (componentize-py) and JavaScript
# (componentize-js) into plugins/target/lang/. Installs the two toolchains if missing (PyPI
# and npm, pinned); skips a component that is newer than its sources and the WIT.
set -euo pipefail
cd "$(dirname "$0")"
out=target/lang
mkdir -p "$out"

stale() { # output, then inputs
    local target=$1
    shift
    [ ! -e "$target" ] && return 0
    [ -n "$(find "$@" ../wit -newer "$target" -type f -print -quit)" ]
}

if ! componentize-py --version 2>/dev/null | grep -qx "componentize-py 0.25.0"; then
    python3 -m pip install -q --disable-pip-version-check componentize-py==0.25.0
fi
if [ ! -x js/node_modules/.bin/componentize-js ]; then
    (cd js && npm ci --no-audit --no-fund --loglevel=error)
fi

for dir in python/*/; do
    name=$(basename "$dir" | tr - _)
    target="$out/${name}_py.wasm"
    if stale "$target" "$dir"; then
        echo "building $target"
        (cd "$dir" && componentize-py -d ../../../wit -w exchange-plugin componentize app -o "../../$target.tmp")
        mv "$target.tmp" "$target"
    fi
done

for dir in js/*/; do
    [ "$dir" = "js/node_modules/" ] && continue
    name=$(basename "$dir" | tr - _)
    target="$out/${name}_js.wasm"
    if stale "$target" "$dir"; then
        echo "building $target"
        # No http or fetch-event: a plugin gets no network, and the host offers no wasi:http.
        js/node_modules/.bin/componentize-js "$dir/app.js" --wit ../wit -n exchange-plugin \
            -d http fetch-event -o "$target.tmp"
        mv "$target.tmp" "$target"
    fi
done
