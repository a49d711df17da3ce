#!/usr/bin/env python3
"""Kills `tidemark backup` of a tracked SQLite database (an incremental read from the change
log) at the N-th call of a set of system calls (strace's fault injection), for N = 1, 2, ...
until a run completes. The changes are made by the sqlite3 shell, in random key order: updates,
deletions, keys moved by an UPDATE of the primary key, a REPLACE, a negative key. After each
kill: the source's content (its `.dump`) is unchanged; verify calls the backup intact, in which
case its restore equals the state before or after the killed run, or refuses it as interrupted
(exit 3); then two more rounds of changes and backups each succeed, verify, and restore equal to
the source (read back by the sqlite3 shell). Prints each problem and a total.

usage: tracked_kills.py SYSCALLS [archive|folder] [MAX_N]
  e.g. tracked_kills.py rename,renameat,renameat2
needs: strace, the sqlite3 shell, and `cargo build --release -p tidemark-cli` or TIDEMARK_BIN."""
import os, sys, shutil, tempfile, random
from common import BIN, run, kill_sweep

sc = sys.argv[1]
fmt = sys.argv[2] if len(sys.argv) > 2 else "archive"
maxn = int(sys.argv[3]) if len(sys.argv) > 3 else 10**6
W = tempfile.mkdtemp(prefix=f"tk-{fmt}-", dir=os.environ.get("TMPDIR", "/tmp"))


def sh(db, sql):
    r = run(["sqlite3", db, sql])
    assert r.returncode == 0, (db, r.stderr)
    return r.stdout


def dump(db):
    return sh(db, ".dump t")


def change(db, seed):
    """2,600 keys of 10,000 in random order, in one transaction (over the 2,048 changed keys
    from which the row lookups are shared with a second connection)."""
    rnd = random.Random(seed)
    ids = rnd.sample(range(1, 10001), 2600)
    sql = ["BEGIN;"]
    sql += [f"UPDATE t SET v = 'x{seed}-{i}' WHERE id = {i};" for i in ids[:2000]]
    sql += [f"DELETE FROM t WHERE id = {i};" for i in ids[2000:2300]]
    sql += [f"UPDATE OR IGNORE t SET id = {i + 100000 * (seed + 1)} WHERE id = {i};"
            for i in ids[2300:]]
    sql += [f"INSERT OR REPLACE INTO t VALUES ({-seed - 5}, 'negative');", "COMMIT;"]
    sh(db, "\n".join(sql))


def backup(src, dest, pre=()):
    return run(list(pre) + [BIN, "backup", "--source", f"sqlite:{src}", "--to", dest,
                            "--format", fmt])


tpl = os.path.join(W, "tpl")
os.makedirs(tpl)
src, dest = os.path.join(tpl, "s.db"), os.path.join(tpl, "bk")
sh(src, "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) "
        "INSERT INTO t SELECT i, 'v' || i FROM n;")
assert run([BIN, "track", "--source", f"sqlite:{src}"]).returncode == 0
assert backup(src, dest).returncode == 0
orig = dump(src)
change(src, 1)


def start_case(n):
    """A fresh copy of the template, with the source's content before the kill."""
    case = os.path.join(W, "case")
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(tpl, case)
    src = os.path.join(case, "s.db")
    return {"dir": case, "src": src, "dest": os.path.join(case, "bk"), "dump": dump(src)}


def command(case):
    return [BIN, "backup", "--source", f"sqlite:{case['src']}", "--to", case["dest"],
            "--format", fmt]


def check(case):
    csrc, cdest, before = case["src"], case["dest"], case["dump"]
    why = []
    if dump(csrc) != before:
        why.append("the source's content changed")
    v = run([BIN, "verify", cdest])
    if not (v.returncode == 0 or (v.returncode == 3 and "interrupted" in v.stderr)):
        why.append(f"verify after kill: exit {v.returncode}: {v.stderr.strip()[-300:]}")
    if v.returncode == 0:
        t = os.path.join(case["dir"], "r0.db")
        rr = run([BIN, "restore", "--from", cdest, "--to", f"sqlite:{t}"])
        if rr.returncode != 0:
            why.append(f"restore after kill: {rr.stderr.strip()[-300:]}")
        elif dump(t) not in (before, orig):
            why.append("the restore after the kill is neither the old state nor the new")
    for seed in (2, 3):
        b = backup(csrc, cdest)
        if b.returncode != 0:
            why.append(f"next backup: {b.stderr.strip()[-300:]}")
            break
        v = run([BIN, "verify", cdest])
        if v.returncode != 0:
            why.append(f"verify after the next backup: {v.stderr.strip()[-300:]}")
        t = os.path.join(case["dir"], f"r{seed}.db")
        rr = run([BIN, "restore", "--from", cdest, "--to", f"sqlite:{t}"])
        if rr.returncode != 0:
            why.append(f"restore after the next backup: {rr.stderr.strip()[-300:]}")
        elif dump(t) != dump(csrc):
            why.append(f"round {seed}: the restore differs from the source")
        change(csrc, seed)
    return why


problems = kill_sweep(f"tracked backup ({fmt})", sc, maxn, start_case, command, check)
print(f"PROBLEMS {problems}")
shutil.rmtree(W)
