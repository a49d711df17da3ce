#!/usr/bin/env python3
"""Kills `tidemark track` (or `track --remove`) at the N-th call of a set of system calls
(strace's fault injection), for N = 1, 2, ... until a run completes: the one command that
writes into the source. After each kill, read by the sqlite3 shell: the database passes
`PRAGMA integrity_check`, holds the application's rows and its own trigger unchanged, and
takes the application's writes (an insert that fires its trigger, an update, a deletion, a
WITHOUT ROWID insert); the command run again succeeds; a backup, a change, a second backup and
a restore then equal the database. Prints each problem and a total. See docs/RELIABILITY.md.

usage: track_kills.py SYSCALLS track|remove WAL|DELETE
  e.g. track_kills.py pwrite64,fsync,fdatasync,rename,unlink,ftruncate remove WAL
needs: strace, the sqlite3 shell, and `cargo build --release -p tidemark-cli` or TIDEMARK_BIN."""
import os, sys, shutil, tempfile
from common import BIN, run
sc, mode, journal = sys.argv[1], sys.argv[2], sys.argv[3]
W = tempfile.mkdtemp(prefix="trk-", dir=os.environ.get("TMPDIR", "/tmp"))
def sh(db, sql):
    r = run(["sqlite3", db, sql]); return r
tpl = os.path.join(W, "tpl.db")
r = sh(tpl, f"PRAGMA journal_mode={journal}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE audit(n INTEGER); "
       "CREATE TRIGGER app_t AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.id); END; "
       "CREATE TABLE u(a TEXT, b INT, PRIMARY KEY(a, b)) WITHOUT ROWID; "
       "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO t SELECT i, 'v' || i FROM n; "
       "INSERT INTO u VALUES ('a', 1), ('b', 2);")
assert r.returncode == 0, r.stderr
if mode == "remove":
    assert run([BIN, "track", "--source", f"sqlite:{tpl}"]).returncode == 0
def userdump(db):
    return sh(db, ".dump t\n.dump u\n.dump audit").stdout
want = userdump(tpl)
problems = 0; n = 1
while True:
    case = os.path.join(W, "case"); shutil.rmtree(case, ignore_errors=True); os.makedirs(case)
    for f in os.listdir(W):
        if f.startswith("tpl.db"): shutil.copy2(os.path.join(W, f), os.path.join(case, f.replace("tpl.db", "s.db")))
    db = os.path.join(case, "s.db")
    args = [BIN, "track", "--source", f"sqlite:{db}"] + (["--remove"] if mode == "remove" else [])
    r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={sc}:signal=KILL:when={n}"] + args)
    if r.returncode == 0:
        print(f"completed at n={n}: {n-1} kill points", flush=True); break
    why = []
    ic = sh(db, "PRAGMA integrity_check")
    if ic.stdout.strip() != "ok": why.append(f"integrity: {ic.stdout.strip()[:200]} {ic.stderr.strip()[:200]}")
    if userdump(db) != want: why.append("user data or trigger changed")
    w = sh(db, "INSERT INTO t(v) VALUES ('app'); UPDATE t SET v = 'app2' WHERE id = 5; DELETE FROM t WHERE id = 6; INSERT INTO u VALUES ('c', 3);")
    if w.returncode != 0: why.append(f"application write fails: {w.stderr.strip()[:300]}")
    r2 = run(args)
    if r2.returncode != 0: why.append(f"{mode} again: {r2.stderr.strip()[:300]}")
    # then tracked-or-not must back up and restore equal
    bk = os.path.join(case, "bk"); t2 = os.path.join(case, "r.db")
    b = run([BIN, "backup", "--source", f"sqlite:{db}", "--to", bk, "--format", "archive"])
    if b.returncode != 0: why.append(f"backup: {b.stderr.strip()[:300]}")
    else:
        sh(db, "INSERT INTO t(v) VALUES ('later'); DELETE FROM t WHERE id = 7;")
        b = run([BIN, "backup", "--source", f"sqlite:{db}", "--to", bk])
        rr = run([BIN, "restore", "--from", bk, "--to", f"sqlite:{t2}"])
        if b.returncode != 0 or rr.returncode != 0: why.append(f"backup/restore: {b.stderr[-200:]} {rr.stderr[-200:]}")
        elif userdump(t2) != userdump(db): why.append("restore differs")
    if why: problems += 1; print(f"n={n}: " + " | ".join(why), flush=True)
    n += 1
print(f"PROBLEMS {problems}")
shutil.rmtree(W)
