"""What the kill sweeps share: where the binaries are, and each store's independent client
(plain sled through backend-sled's `plain_sled` example, rocksdict's RocksDB, the sqlite3
shell) to write a round of changes and to read a database back."""
import os
import subprocess

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tidemark-target"))
BIN = os.environ.get("TIDEMARK_BIN", os.path.join(TARGET, "release", "tidemark"))
SLED = os.path.join(TARGET, "release", "examples", "plain_sled")
PY = os.environ.get("TIDEMARK_PYTHON", os.path.expanduser("~/.cache/tidemark-venv/bin/python"))
ROCKSAPP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                        "tidemark-cli", "tests", "support", "rocksapp.py")


def run(args):
    return subprocess.run(args, capture_output=True, text=True)


def write(kind, path, rnd):
    """Round 0 creates the database's records; each later round changes some of them."""
    if kind == "sled":
        r = run([SLED, "write", path, str(rnd)])
    elif kind == "rocksdb":
        r = run([PY, ROCKSAPP, "write", path, str(rnd * 100), "300", "--keep-wal"])
    elif rnd == 0:
        r = run(["sqlite3", path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); "
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                 "INSERT INTO t SELECT i, 'v' || i FROM n;"])
    else:
        r = run(["sqlite3", path, f"UPDATE t SET v = 'r{rnd}' WHERE id % 3 = {rnd % 3}; "
                 f"DELETE FROM t WHERE id % 7 = {rnd % 7};"])
    assert r.returncode == 0, (path, r.stderr)


def dump(kind, path):
    """The database's content as its own client reads it; None if there is none."""
    if not os.path.exists(path):
        return None
    if kind == "sled":
        r = run([SLED, "dump", path])
    elif kind == "rocksdb":
        r = run([PY, ROCKSAPP, "dump", path])
    else:
        r = run(["sqlite3", path, ".dump"])
    assert r.returncode == 0, (path, r.stderr)
    return r.stdout
