#!/usr/bin/env python3
"""Races a backup of a SQLite database with a hot journal (a writer killed inside a
transaction that rewrote every row, its pages spilled into the database file) against the
application coming back: after 0-80 ms the application opens the database, which rolls the
transaction back, and commits one row. The backup reads a copy rolled back in a scratch
directory, or the database itself if the application was first; a copy made while the
application rolled back must be noticed and made again. Every backup must restore to the
committed state of one moment (100,000 rows, or those and the application's new row), with
nothing of the unfinished transaction and `PRAGMA integrity_check` ok. See docs/RELIABILITY.md.

usage: hot_journal.py SEED TRIALS"""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import BIN

seed, trials = int(sys.argv[1]), int(sys.argv[2])
random.seed(seed)
W = tempfile.mkdtemp(prefix="hot-journal-", dir=os.environ.get("TMPDIR", "/tmp"))
os.chdir(W)
ROWS = 100000
c = sqlite3.connect("base.db")
c.execute("PRAGMA journal_mode=DELETE")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
c.executemany("INSERT INTO t(v) VALUES (?)", [("c" * 200,)] * ROWS)
c.commit()
c.close()
KILLED = ("import sqlite3, os\nc = sqlite3.connect('w.db')\nc.execute('PRAGMA cache_size=5')\n"
          "c.execute(\"UPDATE t SET v = 'uncommitted'\")\nos._exit(0)\n")
problems = copies = 0
for i in range(trials):
    for f in os.listdir("."):
        if f != "base.db":
            shutil.rmtree(f) if os.path.isdir(f) else os.remove(f)
    shutil.copy("base.db", "w.db")
    subprocess.run([sys.executable, "-c", KILLED], check=True)
    assert os.path.getsize("w.db-journal") > 0
    b = subprocess.Popen([BIN, "backup", "--source", "sqlite:w.db", "--to", "bk",
                          "--format", "archive", "-q"], stderr=subprocess.PIPE, text=True)
    time.sleep(random.uniform(0, 0.08))
    app = sqlite3.connect("w.db", timeout=30)
    app.execute("INSERT INTO t(v) VALUES ('after')")
    app.commit()
    app.close()
    err = b.communicate()[1]
    if b.returncode != 0:
        problems += 1
        print(i, "backup failed:", err.strip()[-300:], flush=True)
        continue
    copies += "hot journal" in err
    r = subprocess.run([BIN, "restore", "--from", "bk", "--to", "sqlite:r.db", "-q"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        problems += 1
        print(i, "restore failed:", r.stderr.strip()[-300:], flush=True)
        continue
    db = sqlite3.connect("r.db")
    n, unfinished, after = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE v = 'uncommitted'), "
        "count(*) FILTER (WHERE v = 'after') FROM t").fetchone()
    check = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    if n not in (ROWS, ROWS + 1) or unfinished or after != n - ROWS or check != "ok":
        problems += 1
        print(i, "PROBLEM: rows", n, "unfinished", unfinished, "after", after, check, flush=True)
shutil.rmtree(W)
print(f"hot_journal seed {seed}: {trials} trials, {copies} read a rolled-back copy, "
      f"{problems} problems")
sys.exit(1 if problems else 0)
