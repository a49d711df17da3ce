#!/usr/bin/env python3
"""Incrementals of a tracked SQLite database (WAL) while an application (Python's sqlite3)
commits a transaction every few milliseconds: 600 random rows set to the transaction's number
N, and a counter row (id 0) set to N. Each incremental reads thousands of changed keys, where
the row lookups are shared with a second connection when it sees the view's snapshot. Then
every archive's checkpoint is restored (`--at`) and read back with sqlite3: a state taken from
one snapshot has no row above its counter and exactly the 601 rows of its last transaction; a
lookup in a newer snapshot would show a row above the counter ("TORN").

usage: torn_snapshots.py [BACKUPS]     needs: `cargo build --release -p tidemark-cli` or
TIDEMARK_BIN. See docs/RELIABILITY.md."""
import sqlite3, subprocess, random, os, sys, time, json, shutil, threading, tempfile
from common import BIN
backups = int(sys.argv[1]) if len(sys.argv) > 1 else 25
W = tempfile.mkdtemp(prefix="torn-", dir=os.environ.get("TMPDIR", "/tmp"))
db = f"{W}/s.db"
c = sqlite3.connect(db); c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
with c: c.executemany("INSERT INTO t VALUES (?, 0)", [(i,) for i in range(20000)])
c.close()
subprocess.run([BIN, "track", "--source", f"sqlite:{db}"], check=True, capture_output=True)
subprocess.run([BIN, "backup", "--source", f"sqlite:{db}", "--to", f"{W}/bk", "--format", "archive"], check=True, capture_output=True)
stop = False
def writer():
    w = sqlite3.connect(db, timeout=30); r = random.Random(7); n = 0
    while not stop:
        n += 1
        with w:
            for i in r.sample(range(1, 20000), 600): w.execute("UPDATE t SET v = ? WHERE id = ?", (n, i))
            w.execute("UPDATE t SET v = ? WHERE id = 0", (n,))
        time.sleep(0.002)
th = threading.Thread(target=writer); th.start()
for k in range(backups):
    time.sleep(0.03)
    r = subprocess.run([BIN, "backup", "--source", f"sqlite:{db}", "--to", f"{W}/bk"], capture_output=True, text=True)
    if r.returncode != 0: print("backup failed", r.stderr)
stop = True; th.join()
arch = [json.loads(l) for l in subprocess.run([BIN, "list", f"{W}/bk", "--json"], capture_output=True, text=True).stdout.splitlines()]
bad = 0
for a in arch:
    t = f"{W}/r.db"
    if os.path.exists(t): os.remove(t)
    r = subprocess.run([BIN, "restore", "--from", f"{W}/bk", "--to", f"sqlite:{t}", "--at", str(a["to"])], capture_output=True, text=True)
    if r.returncode != 0: print("restore failed", a["to"], r.stderr); bad += 1; continue
    q = sqlite3.connect(t)
    counter = q.execute("SELECT v FROM t WHERE id = 0").fetchone()[0]
    mx = q.execute("SELECT max(v) FROM t").fetchone()[0]
    cnt = q.execute("SELECT count(*) FROM t WHERE v = ?", (counter,)).fetchone()[0]
    q.close()
    ok = (mx == counter) and (counter == 0 or cnt == 601)
    if not ok: bad += 1
    print(a["sequence"], a["kind"], a["records_in_archive"], "counter", counter, "max", mx, "rows of last txn", cnt, "OK" if ok else "TORN")
print("PROBLEMS", bad)
shutil.rmtree(W)
