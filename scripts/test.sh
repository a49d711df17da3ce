#!/usr/bin/env bash
# Runs tidemark's whole test suite from a fresh clone: installs what it needs, checks
# formatting and lints, then runs every test (unit, conformance, CLI end-to-end, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The RocksDB tests use an independent application: rocksdict from PyPI (its own RocksDB 9.x),
# in a virtual environment outside the clone. Debian's python3 needs python3-venv for it.
export TIDEMARK_PYTHON="${TIDEMARK_PYTHON:-$HOME/.cache/tidemark-venv/bin/python}"
if ! "$TIDEMARK_PYTHON" -c 'import rocksdict' >/dev/null 2>&1; then
  echo "setup: installing rocksdict (pip, in a venv)" >&2
  venv="$(dirname "$(dirname "$TIDEMARK_PYTHON")")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'rocksdict==0.3.29' >/dev/null \
    || "$venv/bin/python" -m pip install -q --disable-pip-version-check rocksdict
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
