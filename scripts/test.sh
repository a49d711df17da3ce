#!/usr/bin/env bash
# Runs tidemark's whole test suite from a fresh clone: installs what it needs, checks
# formatting and lints, then runs every test (unit, conformance, CLI end-to-end, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
