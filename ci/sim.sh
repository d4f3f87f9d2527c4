#!/usr/bin/env bash
# The simulation as CI runs it (called by ci/test.sh): a seed sweep with
# faults, the determinism meta-test and the mutants, on the release build.
#   ci/sim.sh [seeds]        default 1..101
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-1..101}"
cargo build --release --locked -p sim
echo "==> sim sweep $seeds"
./target/release/sim --seeds "$seeds" --json
echo "==> sim meta-test"
./target/release/sim meta --seed 42
./target/release/sim meta --seeds 1..21
echo "==> sim mutants"
./target/release/sim mutants --seeds 1..50
