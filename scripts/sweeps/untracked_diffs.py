"""Diff-based incrementals of a SQLite database without change tracking while Python's `sqlite3`
writes it (an independent client): each transaction moves amounts between random rows of
`acct` (200,000 rows), inserts, replaces or deletes a row of the TEXT-keyed `note`, and sets
`meta.n` to its own number. Its operations come from a generator seeded by that number, so the
database after transaction n can be rebuilt in memory. Each of RUNS one-shot `tidemark backup`
runs into one archive chain (after the first, diffs: a scan, then the changed rows looked up or
scanned again) is restored and must equal exactly the database after transaction n, where n is
the restore's own `meta.n`, with `PRAGMA integrity_check` ok; verify must call the chain
intact at the end. Prints how the runs went and each problem.

    python3 scripts/sweeps/untracked_diffs.py WAL|DELETE RUNS SEED

needs `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN). See docs/RELIABILITY.md."""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from common import BIN

ROWS = 200_000
NOTES = 30_000


def ops(seed, n):
    """Transaction n's operations: 50 transfers (from, to, amount) and a note change."""
    rnd = random.Random(seed * 1_000_003 + n)
    transfers = [(rnd.randrange(ROWS), rnd.randrange(ROWS), rnd.randrange(1, 10)) for _ in range(50)]
    key = f"k{rnd.randrange(NOTES)}"
    note = (key, f"v{n}") if rnd.random() < 0.6 else (key, None)
    return transfers, note


def state_after(seed, n):
    """The tables after transaction n, rebuilt in memory."""
    acct = [100] * ROWS
    notes = {f"k{i}": "n" for i in range(0, NOTES, 3)}
    for i in range(1, n + 1):
        transfers, (key, value) = ops(seed, i)
        for a, b, x in transfers:
            acct[a] -= x
            acct[b] += x
        if value is None:
            notes.pop(key, None)
        else:
            notes[key] = value
    return acct, notes


def main():
    mode, runs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    work = tempfile.mkdtemp(prefix="tidemark-untracked-")
    db = os.path.join(work, "s.db")
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA journal_mode={mode}")
    c.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    c.execute("CREATE TABLE note(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
    c.execute("CREATE TABLE meta(id INTEGER PRIMARY KEY, n INTEGER)")
    c.executemany("INSERT INTO acct VALUES (?, 100)", [(i,) for i in range(ROWS)])
    c.executemany("INSERT INTO note VALUES (?, 'n')", [(f"k{i}",) for i in range(0, NOTES, 3)])
    c.execute("INSERT INTO meta VALUES (1, 0)")
    c.commit()
    c.close()

    stop = threading.Event()
    committed = [0]

    def writer():
        w = sqlite3.connect(db, timeout=30, isolation_level=None)
        n = 0
        while not stop.is_set():
            transfers, (key, value) = ops(seed, n + 1)
            try:
                w.execute("BEGIN IMMEDIATE")
                for a, b, x in transfers:
                    w.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (x, a))
                    w.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (x, b))
                if value is None:
                    w.execute("DELETE FROM note WHERE k = ?", (key,))
                else:
                    w.execute("INSERT OR REPLACE INTO note VALUES (?, ?)", (key, value))
                w.execute("UPDATE meta SET n = ? WHERE id = 1", (n + 1,))
                w.execute("COMMIT")
                n += 1
                committed[0] = n
            except sqlite3.OperationalError:
                if w.in_transaction:
                    w.execute("ROLLBACK")
            time.sleep(0.002)
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    problems, methods = [], {}
    try:
        for r in range(runs):
            out = subprocess.run([BIN, "backup", "--source", f"sqlite:{db}", "--to",
                                  os.path.join(work, "bk"), "--format", "archive"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                problems.append(f"run {r}: backup failed: {out.stderr.strip()}")
                continue
            method = ("full" if "(full)" in out.stdout
                      else "diff" if "diff-based" in out.stdout else "other")
            methods[method] = methods.get(method, 0) + 1
            restored = os.path.join(work, f"r{r}.db")
            out = subprocess.run([BIN, "restore", "--from", os.path.join(work, "bk"), "--to",
                                  f"sqlite:{restored}"], capture_output=True, text=True)
            if out.returncode != 0:
                problems.append(f"run {r}: restore failed: {out.stderr.strip()}")
                continue
            rc = sqlite3.connect(restored)
            n = rc.execute("SELECT n FROM meta").fetchone()[0]
            acct = [b for (b,) in rc.execute("SELECT bal FROM acct ORDER BY id")]
            notes = dict(rc.execute("SELECT k, v FROM note"))
            ok = rc.execute("PRAGMA integrity_check").fetchone()[0]
            rc.close()
            os.remove(restored)
            want_acct, want_notes = state_after(seed, n)
            if ok != "ok" or acct != want_acct or notes != want_notes:
                problems.append(f"run {r}: the restore is not the database after transaction "
                                f"{n} (integrity: {ok})")
            print(r, method, f"n={n} (writer at {committed[0]})", flush=True)
    finally:
        stop.set()
        thread.join()
    out = subprocess.run([BIN, "verify", os.path.join(work, "bk")], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"verify: {out.stdout.strip()} {out.stderr.strip()}")
    for p in problems:
        print("PROBLEM", p)
    print(mode, methods, "PROBLEMS", len(problems))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
