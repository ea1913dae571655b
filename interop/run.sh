#!/usr/bin/env bash
# Interoperability suite: Python gRPC clients, OIDC issuers and a workflow executor against the
# service binary.  Usage: interop/run.sh [BINARY]  (default: target/debug/duo-workflow-service,
# relative to the repository root; a relative BINARY is taken from the current directory if it
# exists there, else from the repository root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

binary="${1:-}"
# A relative BINARY is taken from the current directory when it exists there, else from the root.
if [ -n "$binary" ] && [ "${binary#/}" = "$binary" ] && [ -e "$binary" ]; then
    binary="$PWD/$binary"
fi
cd "$root"
binary="${binary:-$root/target/debug/duo-workflow-service}"

venv="$root/.venv-interop"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Install only when requirements.txt changed since the last successful install.
stamp="$venv/.interop-requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi

exec "$venv/bin/python" "$here/interop_test.py" "$binary"
