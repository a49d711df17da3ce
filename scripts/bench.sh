#!/usr/bin/env bash
# The backup benchmark (issue 7, docs/BENCHMARKS.md): builds tidemark and tidemark-bench in
# release mode and runs `tidemark-bench backup` with the arguments given (default: the full
# 1 GiB dataset; e.g. `./scripts/bench.sh --records 20000` for a run of seconds).
#
# The stores and backups go on a new ext4 file system in a loop file (made here, removed at the
# end), so that every run starts from the same state: on a long-used file system, creating
# files where many were just deleted can cost ten times more (ext4 without a journal scans
# recently deleted inodes), which made the folder format's numbers swing 5x between steps.
# Without root (no loop mount), it runs in a directory under $TMPDIR and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -q -p tidemark-cli -p tidemark-bench
bin="$CARGO_TARGET_DIR/release"

# Room for the dataset, its backups and copies: 24x the data plus slack (sparse file), and five
# inodes per record (a forced full over a folder backup in which every record changed holds the
# old documents in its undo area next to the new ones: two trees of two inodes each); each
# record of a folder tree takes at least two 4 KiB blocks (its directory and document.json)
# whatever its size, so small values are counted as ~1 KiB.
records=1000000; value=1000
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --records) records="${args[$((i + 1))]}" ;;
    --value-bytes) value="${args[$((i + 1))]}" ;;
  esac
done
per_record=$(( value + 100 > 1100 ? value + 100 : 1100 ))
gib=$(( (records * per_record * 24) / (1 << 30) + 2 ))

base="$(mktemp -d "${TMPDIR:-/tmp}/tidemark-bench.XXXXXX")"
work="$base/work"
mkdir -p "$work"
mounted=""
cleanup() {
  # Never delete millions of files through the mount: detach it (lazily if something still
  # holds it) and remove the image.
  if [ -n "$mounted" ]; then
    umount "$work" 2>/dev/null || umount -l "$work" 2>/dev/null || true
  fi
  rm -rf "$base"
}
trap cleanup EXIT
if [ "$(id -u)" -eq 0 ] && truncate -s "${gib}G" "$base/fs.img" \
  && mkfs.ext4 -q -F -N $(( records * 5 + 200000 )) "$base/fs.img" \
  && mount -o loop,discard "$base/fs.img" "$work"; then
  mounted=1
  echo "bench: on a new ext4 file system (${gib} GiB loop file)" >&2
else
  echo "bench: no loop mount (not root?): running in $work on the machine's file system" >&2
fi
"$bin/tidemark-bench" backup --work "$work/run" --tidemark "$bin/tidemark" "$@"
