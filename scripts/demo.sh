#!/usr/bin/env bash
# Runs tidemark on the example SQLite database shipped in examples/shop.db: a full backup,
# change tracking, writes by the sqlite3 shell, an incremental backup, verify, and a restore
# whose .dump matches the source.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --quiet -p tidemark-cli --no-default-features --features sqlite
tidemark="$CARGO_TARGET_DIR/release/tidemark"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp examples/shop.db "$work/shop.db"
cd "$work"

run() { echo "\$ tidemark $*"; "$tidemark" "$@"; echo; }

run track --source sqlite:shop.db
run backup --source sqlite:shop.db --to backup
echo "\$ sqlite3 shop.db  # another process writes: an update, a delete, an insert"
sqlite3 shop.db "UPDATE orders SET status = 'shipped' WHERE id <= 20;
                 DELETE FROM order_lines WHERE order_id = 7;
                 INSERT INTO products VALUES ('SKU-9999', 'Gift card', 2500, NULL, '{}');"
echo
run backup --source sqlite:shop.db --to backup
run verify backup
run restore --from backup --to sqlite:restored.db
echo "\$ cat backup/products/SKU-0001/document.json"
cat backup/products/SKU-0001/document.json
echo
if diff <(sqlite3 shop.db .dump | grep -v _tidemark_ | grep -vx 'DELETE FROM sqlite_sequence;') \
        <(sqlite3 restored.db .dump | grep -vx 'DELETE FROM sqlite_sequence;') >/dev/null; then
  echo "OK: sqlite3 .dump of the restored database matches the source (tracking objects aside)"
else
  echo "FAILED: the restored database differs from the source" >&2
  exit 1
fi
