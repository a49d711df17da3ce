"""One-shot archive incrementals of a RocksDB database that an independent application
(rocksdict's RocksDB 9.x, WAL kept an hour, a flush every 2,000 writes) writes all the while:
each run is a new process, so each reads the WAL files and the MANIFEST directly (the WAL-only
view) while the application appends to the WAL, its last record often cut short. Each backup
must restore to one batch's state (the counter n and exactly the rows up to n that the
application kept, each with its value, read back with rocksdict); at the end, with the writer
stopped, one more incremental must restore to the application's last state. Prints each run's
method (WAL-only or not, change log or diff) and the problems.

    $TIDEMARK_PYTHON scripts/sweeps/rocksdb_writer_incrementals.py RUNS SEED

`SWEEP_FLUSH_EVERY=0` makes the application never flush: one WAL file grows for the whole
sweep, and each run reads its tail (the end, and the batches from the block a binary search
finds) while the application appends to it.

needs `cargo build --release -p tidemark-cli --all-features` (or TIDEMARK_BIN) and rocksdict.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, PY  # noqa: E402

LIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "live_kills_rocksdb.py")


def main():
    runs, rnd = int(sys.argv[1]), random.Random(int(sys.argv[2]))
    base = tempfile.mkdtemp(prefix="tidemark-rocksdb-writer-")
    stop = os.path.join(base, "stop")
    app = subprocess.Popen([PY, LIVE, "writer", os.path.join(base, "db"), stop])
    time.sleep(1.0)
    problems, seen = [], {}

    def backup(n):
        out = subprocess.run([BIN, "-vv", "backup", "--source", "rocksdb:db", "--to", "ar",
                              "--format", "archive"], cwd=base, capture_output=True, text=True)
        text = out.stdout + out.stderr
        if out.returncode != 0:
            problems.append((n, "backup failed", text[-400:]))
            return None
        direct = "reading the WAL files directly" in text
        fell_back = "the log-only view cannot take" in text
        kind = "full" if "Backup (full)" in text else "diff" if "diff-based" in text else "wal"
        key = (kind, "direct" if direct and not fell_back else "fallback" if fell_back else "rocksdb")
        seen[key] = seen.get(key, 0) + 1
        return key

    def restores_to_a_batch(n, final=None):
        target = os.path.join(base, f"r{n}")
        r = subprocess.run([BIN, "restore", "--from", "ar", "--to", "rocksdb:" + target],
                           cwd=base, capture_output=True, text=True)
        if r.returncode != 0:
            problems.append((n, "restore failed", r.stderr[-400:]))
            return
        c = subprocess.run([PY, LIVE, "check", target], capture_output=True, text=True)
        if not c.stdout.startswith("OK"):
            problems.append((n, "not one batch's state", c.stdout.strip(), c.stderr[-200:]))
        elif final is not None and c.stdout.split()[1] != final:
            problems.append((n, "not the last state", c.stdout.strip(), final))
        shutil.rmtree(target, ignore_errors=True)

    try:
        for n in range(runs):
            if backup(n):
                restores_to_a_batch(n)
            time.sleep(rnd.uniform(0.0, 0.3))
    finally:
        open(stop, "w").close()
        app.wait()
    c = subprocess.run([PY, LIVE, "check", os.path.join(base, "db")], capture_output=True,
                       text=True)
    last = c.stdout.split()[1] if c.stdout.startswith("OK") else None
    if backup("last"):
        restores_to_a_batch("last", last)
    print("runs", seen)
    print("PROBLEMS", len(problems))
    for p in problems:
        print(p)
    shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
