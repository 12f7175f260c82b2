#!/usr/bin/env bash
# Installs every prerequisite Sluice needs on a fresh Debian 12 machine (root), idempotently:
# a second run only checks and is fast. Says what it did.
#
#   EBPF_TOOLS  where bpf-linker and its LLVM symlinks live (default /opt/sluice-ebpf-tools)
#   NIGHTLY     the nightly toolchain that builds the eBPF crate (default: nightly)
#
# Why each piece:
#   - apt: libsrtp2-dev + pkg-config (an independent SRTP implementation for interop tests and the
#     crypto benchmark), iproute2/ethtool/bpftool/tcpdump (namespaces, veth, XDP inspection),
#     protobuf-compiler (gRPC code generation), redis-server (load-balancer state tests),
#     libssl-dev (OpenSSL: the dataplane's DTLS-SRTP), chromium + nodejs + npm (the headless
#     browser the WebRTC test drives through playwright-core, installed from npm below; no
#     browser is ever downloaded), ffmpeg (a third-party SRTP sender without rtcp-mux, and
#     ffprobe, which judges recordings), GStreamer's tools and base/good/bad plugins (SRTP
#     publishers, subscribers and recorders in the cross-node and recording tests: vp8enc,
#     opusenc, srtpenc/srtpdec, rtpjitterbuffer, matroskamux), prometheus (its promtool checks
#     both daemons' /metrics), tmux (`sluicectl top` in a pseudo-terminal), curl, systemd and
#     util-linux (the units under a real systemd; setpriv for the service-user tests), coturn (an
#     external TURN server in front of Sluice in the relay-only browser test), nftables (a browser
#     whose UDP is blocked, for ICE-TCP).
#   - cargo-deb: builds the Debian package (scripts/package.sh).
#   - nightly + rust-src: the XDP program is built with -Z build-std=core for bpfel-unknown-none.
#   - bpf-linker, linked against the nightly's own libLLVM: bpf-linker 0.13 needs LLVM 21-23 and
#     must match the LLVM major that emits the bitcode; Debian 12 ships at most LLVM 19.
set -euo pipefail
TOOLS=${EBPF_TOOLS:-/opt/sluice-ebpf-tools}
NIGHTLY=${NIGHTLY:-nightly}
BPF_LINKER_VERSION=0.13.0

t0=$(date +%s)
note() { printf 'setup [%3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# 1. Debian packages.
pkgs="pkg-config libssl-dev libsrtp2-dev iproute2 ethtool bpftool tcpdump protobuf-compiler redis-server chromium ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad prometheus tmux curl systemd util-linux coturn nftables"
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  note "apt installed: $(echo $missing)"
else
  note "apt packages present"
fi
# The redis-server package starts a system service; tests start their own server on a port of
# their own, so the packaged one is left as the package manager configured it.

# 2. Nightly with rust-src, and the stable toolchain's components.
rustup run "$NIGHTLY" rustc -V >/dev/null 2>&1 || rustup toolchain install "$NIGHTLY" --profile minimal
rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain "$NIGHTLY"
note "$(rustup run "$NIGHTLY" rustc -V) with rust-src"
# The test command's lint steps: rustfmt and clippy of the default (stable) toolchain.
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
note "rustfmt and clippy present"

# 3. bpf-linker against the nightly's libLLVM.
sysroot=$(rustup run "$NIGHTLY" rustc --print sysroot)
llvm=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: //p'); major=${llvm%%.*}
lib=$(cd "$sysroot/lib" && ls libLLVM.so.* | head -1)
mkdir -p "$TOOLS/llvm/lib"
ln -sfn "$sysroot/lib/$lib" "$TOOLS/llvm/lib/libLLVM.so"
ln -sfn "$sysroot/lib/$lib" "$TOOLS/llvm/lib/$lib"
if "$TOOLS/bin/bpf-linker" --version 2>/dev/null | grep -q " $BPF_LINKER_VERSION\$" \
   && [ "$(cat "$TOOLS/bin/.llvm-lib" 2>/dev/null)" = "$lib" ]; then
  note "bpf-linker $BPF_LINKER_VERSION (LLVM $llvm) present"
else
  note "building bpf-linker $BPF_LINKER_VERSION against $lib (about a minute)"
  LLVM_PREFIX="$TOOLS/llvm" cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
    --no-default-features --features "llvm-$major" --root "$TOOLS" --force -q
  echo "$lib" > "$TOOLS/bin/.llvm-lib"
  note "built bpf-linker"
fi
# aya-build runs `cargo build` for the eBPF crate and needs bpf-linker on PATH.
ln -sfn "$TOOLS/bin/bpf-linker" /usr/local/bin/bpf-linker

# 3b. cargo-deb (the package).
CARGO_DEB_VERSION=3.8.0
if cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\$"; then
  note "cargo-deb $CARGO_DEB_VERSION present"
else
  note "building cargo-deb $CARGO_DEB_VERSION (about a minute and a half)"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked -q
  note "built cargo-deb"
fi

# 4. Kernel facilities the tests use.
mount | grep -q ' /sys/fs/bpf ' || mount -t bpf bpf /sys/fs/bpf
note "bpffs mounted; kernel $(uname -r)"

# 5. The Chromium driver of the WebRTC test (tests/chromium, pinned by its package-lock.json):
# Node.js and npm from Debian unless the machine already has them (a NodeSource nodejs ships its
# own npm, and Debian's npm package conflicts with it).
for tool in node:nodejs npm:npm; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tool##*:}" >/dev/null
    note "apt installed: ${tool##*:}"
  fi
done
chromium_dir="$(cd "$(dirname "$0")/../tests/chromium" && pwd)"
if [ -d "$chromium_dir/node_modules/playwright-core" ]; then
  note "playwright-core present"
else
  (cd "$chromium_dir" && npm ci --no-audit --no-fund -q >/dev/null)
  note "playwright-core installed (npm ci in tests/chromium)"
fi
