#!/usr/bin/env bash
# Prepares a machine that may not have Rust yet, then lets `cargo xtask setup`
# install the rest (Debian packages, the kernel target, the image builder's
# nightly). On a machine that already has rustup and a stable toolchain, the
# README's two commands do all of this by themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is not installed. Install it from your distribution (Debian: apt-get install rustup)"
    echo "or as described at rustup.rs, then run this script again."
    exit 1
fi
if ! rustup toolchain list | grep -q '^stable'; then
    rustup toolchain install stable --profile minimal --component rustfmt,clippy
fi
cargo xtask setup
echo "ready: 'cargo xtask run' boots Basalt, 'cargo xtask qemu-test' tests it"
