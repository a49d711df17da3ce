#!/usr/bin/env bash
# Installs what tidemark's build and tests need on a fresh Debian machine (idempotent).
# Sourced by the other scripts; run as root (or with sudo available).
set -euo pipefail

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# The archive tests read archives with the standard tools.
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
# The benchmark's anchor is tar + zstd -3.
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# RocksDB's bindings are generated with libclang.
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(clang libclang-dev)
# moto (below) comes from PyPI.
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The remote-destination tests run a real S3-compatible server on loopback: moto's moto_server.
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "setup: installing moto[server] (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check 'moto[server]' >/dev/null 2>&1 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages 'moto[server]'
fi

# Keep the build cache outside the clone so repeated runs are quick (never required).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidemark-target}"
