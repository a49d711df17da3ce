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
# Every public item's documentation builds, and its links resolve (none to a private item).
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --all-features --no-deps

# The library crate `tidemark` with no backend and with each feature alone: each builds (with
# its examples and tests), and its dependency tree holds no other store.
for feature in "" sqlite rocksdb sled remote; do
  echo "check: tidemark --features '${feature}'" >&2
  cargo check -q -p tidemark --no-default-features ${feature:+--features "$feature"} --all-targets
  deps="$(cargo tree -q -p tidemark --no-default-features ${feature:+--features "$feature"} \
    -e normal --prefix none | cut -d' ' -f1 | sort -u)"
  for other in backend-sqlite backend-rocksdb backend-sled tidemark-remote; do
    case "$other" in *"${feature:-none}"*) continue ;; esac
    if grep -qx "$other" <<<"$deps"; then
      echo "error: tidemark with features '${feature}' depends on $other" >&2
      exit 1
    fi
  done
done
cargo test --workspace --all-features

# The library's example services: each runs a live backup beside its writers, shuts down and
# checks the restored copy against its database (exits non-zero if they differ).
for example in sqlite_service rocksdb_service sled_service; do
  echo "example: $example" >&2
  cargo run -q -p tidemark --all-features --example "$example"
done
