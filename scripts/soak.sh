#!/usr/bin/env bash
# The soak: SECONDS of mixed load against three replicas of the release binary while faults
# happen on a schedule (see examples/soak/main.rs and the README's "Soak"). Builds what it
# needs, prints its tables and `N passed, M failed`, and exits non-zero on any failure.
#   scripts/soak.sh SECONDS [--rate CALLS_PER_SECOND]     (at least 75 for one cycle of faults)
# SOAK_KEEP_LOGS=1 keeps every process's log (they are kept anyway when something failed).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/soak.sh SECONDS [--rate CALLS_PER_SECOND]}"
shift
cargo build --release --locked -p duo-workflow-service --bin duo-workflow-service \
    -p duo-workflow-contract --example soak
exec target/release/examples/soak run "$seconds" --binary target/release/duo-workflow-service "$@"
