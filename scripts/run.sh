#!/usr/bin/env bash
# The main job, from a fresh machine: installs the prerequisites, builds in release mode and runs
# the Sluice demo with live numbers. Extra arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --locked --release -q -p sluice-bench -- demo "$@"
