#!/usr/bin/env bash
# The main job, from a fresh machine: installs the prerequisites, builds in release mode and runs
# the Sluice demo with live numbers. Extra arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The demo starts sluice-dataplane and sluice-controlplane from its own directory: build all three.
cargo build --locked --release -q -p sluice-bench -p sluice-dataplane -p sluice-controlplane
exec "${CARGO_TARGET_DIR:-target}/release/sluice-bench" demo "$@"
