"""Full backups of a tracked SQLite database in rollback-journal mode (read in steps, each in a
read transaction of its own, then set right by replaying the change log) while a writer
(Python's sqlite3, busy timeout 30 s) commits transactions that each insert a row into `log`,
update a row of `log`, REPLACE a row of `kv` (a TEXT primary key: the REPLACE gives the row a new
rowid, so a scan in steps can meet it twice), update a row of a WITHOUT ROWID table (read in
steps by its primary key) and set a counter to the transaction's number.
Each full backup goes to a new destination; verify must call it intact, and its restore, read
with Python's sqlite3, must be exactly the database after the counter's transaction: every
transaction up to it applied, none after.

    python3 scripts/sweeps/stepped_fulls.py archive|folder TRIALS SEED
"""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as B

FMT = sys.argv[1]; N = int(sys.argv[2]); random.seed(int(sys.argv[3]))
W = tempfile.mkdtemp(prefix="tidemark-stepped-fulls-")
ROWS, KEYS = 20000, 20000


def tm(args):
    return subprocess.run([B] + args, cwd=W, capture_output=True, text=True)


db = sqlite3.connect(W + "/src.db", isolation_level=None, timeout=30)
assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, v TEXT)")
db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT)")
db.execute("CREATE TABLE wr(a INTEGER, b TEXT, v TEXT, PRIMARY KEY(a, b)) WITHOUT ROWID")
db.execute("CREATE TABLE ctr(id INTEGER PRIMARY KEY, n INTEGER)")
db.execute("INSERT INTO ctr VALUES (1, 0)")
db.execute("BEGIN")
for i in range(1, ROWS + 1):
    db.execute("INSERT INTO log VALUES (?, ?)", (i, "seed"))
for i in range(KEYS):
    db.execute("INSERT INTO kv VALUES (?, ?)", ("key%05d" % i, "seed"))
    db.execute("INSERT INTO wr VALUES (?, ?, ?)", (i % 13, "b%d" % i, "seed"))
db.execute("COMMIT")
r = tm(["track", "--source", "sqlite:src.db"]); assert r.returncode == 0, r.stderr

# ops[i]: transaction i's (updated log row, replaced key); its inserted row is ROWS + i.
ops = [None]; stop = False


def writer():
    c = sqlite3.connect(W + "/src.db", isolation_level=None, timeout=30)
    rnd = random.Random(1)
    i = 0
    while not stop:
        i += 1
        upd, key = rnd.randint(1, ROWS), "key%05d" % rnd.randrange(KEYS)
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO log VALUES (?, ?)", (ROWS + i, "new%d" % i))
        c.execute("UPDATE log SET v = ? WHERE id = ?", ("u%d" % i, upd))
        c.execute("REPLACE INTO kv VALUES (?, ?)", (key, "r%d" % i))
        w = int(key[3:])
        c.execute("UPDATE wr SET v = ? WHERE a = ? AND b = ?", ("w%d" % i, w % 13, "b%d" % w))
        c.execute("UPDATE ctr SET n = ? WHERE id = 1", (i,))
        c.execute("COMMIT")
        ops.append((upd, key))
        time.sleep(rnd.random() * 0.002)


t = threading.Thread(target=writer); t.start()
problems = 0
try:
    for trial in range(N):
        shutil.rmtree(W + "/bk", ignore_errors=True)
        r = tm(["backup", "--source", "sqlite:src.db", "--to", "bk", "--format", FMT, "--full"])
        if r.returncode:
            problems += 1; print(trial, "backup failed:", r.stderr.strip()); continue
        v = tm(["verify", "bk"])
        if v.returncode or "intact" not in v.stdout:
            problems += 1; print(trial, "verify:", v.stdout.strip(), v.stderr.strip())
        out = W + "/r%d.db" % trial
        r = tm(["restore", "--from", "bk", "--to", "sqlite:" + out])
        if r.returncode:
            problems += 1; print(trial, "restore failed:", r.stderr.strip()); continue
        c = sqlite3.connect(out)
        n = c.execute("SELECT n FROM ctr").fetchone()[0]
        log = dict(c.execute("SELECT id, v FROM log"))
        kv = dict(c.execute("SELECT k, v FROM kv"))
        wr = dict(c.execute("SELECT b, v FROM wr"))
        c.close(); os.remove(out)
        want_log = {i: "seed" for i in range(1, ROWS + 1)}
        want_kv = {"key%05d" % i: "seed" for i in range(KEYS)}
        want_wr = {"b%d" % i: "seed" for i in range(KEYS)}
        for i in range(1, n + 1):
            upd, key = ops[i]
            want_log[ROWS + i] = "new%d" % i
            want_log[upd] = "u%d" % i
            want_kv[key] = "r%d" % i
            want_wr["b%d" % int(key[3:])] = "w%d" % i
        if log != want_log or kv != want_kv or wr != want_wr:
            problems += 1
            bad = [k for k in want_log if log.get(k) != want_log[k]][:3]
            bad += [k for k in want_kv if kv.get(k) != want_kv[k]][:3]
            bad += [k for k in want_wr if wr.get(k) != want_wr[k]][:3]
            print(trial, "INCONSISTENT after transaction", n, "of", len(ops) - 1, bad)
        else:
            print(trial, "ok: transaction", n, "of", len(ops) - 1, "|", v.stdout.strip()[:60])
finally:
    stop = True; t.join()
    shutil.rmtree(W, ignore_errors=True)
print("PROBLEMS", problems)
