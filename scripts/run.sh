#!/usr/bin/env bash
# The main job, from a fresh machine: installs the prerequisites, builds in release mode and runs
# a short capacity run of the whole system with live numbers: sluice-dataplane and
# sluice-controlplane as children, a few meetings programmed over gRPC with per-leg SRTP keys,
# paced SRTP through each I/O backend in turn, a ramp until the load is no longer carried (or the
# demo scenario ends), then the report (table; JSON and SVG under target/). About 40 seconds.
# Extra arguments go to `sluice-bench capacity` (try --help); `sluice-bench demo` is the older
# per-participant demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The bench starts sluice-dataplane and sluice-controlplane from its own directory: build all three.
cargo build --locked --release -q -p sluice-bench -p sluice-dataplane -p sluice-controlplane
out="${CARGO_TARGET_DIR:-target}"
exec "$out/release/sluice-bench" capacity --scenario bench/scenarios/demo.toml --mode ramp --backends mmsg,uring \
    --ceiling-seconds 1 --ports 26000-26999 --json "$out/capacity-demo.json" --svg "$out/capacity-demo.svg" "$@"
