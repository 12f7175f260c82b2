#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the prerequisites (scripts/setup.sh), then
# builds everything (the XDP program on the nightly, the rest on stable) and runs every test.
# Needs root: tests load XDP programs and create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --locked --all-targets
# Lint policy: the house format (rustfmt.toml) and clippy with every warning an error (the
# workspace lints are in Cargo.toml).
cargo fmt --all --check
cargo clippy --locked --all-targets -q -- -D warnings
# The fuzz targets live outside the workspace (cargo fuzz runs them on the nightly); they must
# keep compiling against the crates they fuzz.
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
cargo test --locked --doc -q
# Tests listen on fixed ports (each test's own range, see the tests' headers), many of them
# inside the kernel's ephemeral range (32768-60999): a client socket of another test running
# beside them could take one first ("Address already in use"). Reserved ports are never handed
# out automatically (explicit binds still work); the old value comes back when the run ends.
reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)
trap 'echo "$reserved" > /proc/sys/net/ipv4/ip_local_reserved_ports' EXIT
echo "32768-36999,41000-41999,45000-45999" > /proc/sys/net/ipv4/ip_local_reserved_ports
cargo nextest run --locked --no-fail-fast --failure-output immediate-final
# The Debian package end to end: built, installed, both units started under a real systemd, a
# meeting programmed with sluicectl, /metrics checked with promtool, stopped, removed.
./scripts/package-test.sh
