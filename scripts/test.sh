#!/usr/bin/env bash
# Every test: the Rust unit, contract, key-source and end-to-end tests, then the independent
# Python interoperability suite (grpcio + PyJWT, installed into .venv-interop) against the
# release binary, then a 75 s soak under faults (scripts/soak.sh). Needs cargo, python3, node/npm and
# access to crates.io, PyPI and npm; nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
cargo build --release --locked -p duo-workflow-service
interop/run.sh target/release/duo-workflow-service
scripts/soak.sh 75
