"""Live backups of a RocksDB database killed (SIGKILL) at random moments while an independent
application (rocksdict's RocksDB 9.x, WAL kept an hour, a flush every 2,000 writes) commits
write batches that put a row, sometimes delete an older one, and set a counter to the last
row's number. After each kill, verify must call the backup intact (a folder may be
"interrupted", repaired by the next run), and a restore, read back with rocksdict, must be one
batch's state: the counter n and exactly the rows up to n that the application kept, each
with its value.

    python3 scripts/sweeps/live_kills_rocksdb.py archive|folder TRIALS SEED

Runs itself under rocksdict's Python ($TIDEMARK_PYTHON) as the application (`writer`) and the
reader (`check`).
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PY, live_kill_trials  # noqa: E402


def writer(path, stop_file):
    from rocksdict import Options, Rdict, WriteBatch
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.set_wal_ttl_seconds(3600)
    db = Rdict(path, o)
    # SWEEP_FLUSH_EVERY=0: never flush, so that one WAL file grows for the whole sweep.
    every = int(os.environ.get("SWEEP_FLUSH_EVERY", "2000"))
    i = int(db.get(b"counter", b"0"))
    while not os.path.exists(stop_file):
        i += 1
        wb = WriteBatch(raw_mode=True)
        wb.put(b"row%08d" % i, b"x" * (i % 500))
        if i % 7 == 0:
            wb.delete(b"row%08d" % (i - 3))
        wb.put(b"counter", str(i).encode())
        db.write(wb)
        if every and i % every == 0:
            db.flush()
        time.sleep(0.0005)
    db.close()


def check(path):
    from rocksdict import Options, Rdict
    db = Rdict(path, Options(raw_mode=True))
    n = int(db.get(b"counter", b"0"))
    keys = sorted(k for k in db.keys() if k.startswith(b"row"))
    want = sorted(b"row%08d" % i for i in range(1, n + 1) if not (i + 3 <= n and (i + 3) % 7 == 0))
    good = keys == want and all(len(db[k]) == int(k[3:]) % 500 for k in keys)
    db.close()
    print("OK" if good else "BAD", n, len(keys), len(want))


def main():
    fmt, trials = sys.argv[1], int(sys.argv[2])
    random.seed(int(sys.argv[3]))
    base = tempfile.mkdtemp(prefix="tidemark-live-kills-rocksdb-")
    stop = os.path.join(base, "stop")
    app = subprocess.Popen([PY, __file__, "writer", os.path.join(base, "db"), stop])
    time.sleep(1.0)
    def check_restore(target):
        c = subprocess.run([PY, __file__, "check", target], capture_output=True, text=True)
        return c.stdout.startswith("OK"), (c.stdout.strip() + " " + c.stderr[-200:]).strip()

    try:
        problems = live_kill_trials(base, "rocksdb:db", fmt, trials, (0.2, 2.0),
                                    lambda t: ("rocksdb:" + os.path.join(base, f"r{t}"),
                                               os.path.join(base, f"r{t}")), check_restore)
    finally:
        open(stop, "w").close()
        app.wait()
    print("PROBLEMS", len(problems))
    for x in problems:
        print(x)
    shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        main()
