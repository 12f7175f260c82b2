#!/usr/bin/env bash
# Builds the Debian package: both daemons and sluicectl (release), their man pages, the systemd
# units, sysusers/tmpfiles entries and the configuration under /etc/sluice/ (all from
# packaging/). Prints the package's path. Needs cargo-deb (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --locked --release -q -p sluice-dataplane -p sluice-controlplane
mkdir -p target/man
target/release/sluice-dataplane --man > target/man/sluice-dataplane.8
target/release/sluice-controlplane --man > target/man/sluice-controlplane.8
target/release/sluicectl --man > target/man/sluicectl.1
cargo deb --locked -q -p sluice-dataplane --no-build | tail -n 1
