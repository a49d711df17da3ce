#!/usr/bin/env python3
"""Kills `tidemark restore --force` over an existing database at the N-th call of a set of
system calls (strace's fault injection), for N = 1, 2, ... until a run completes. After each
kill the target must hold the old state or the new one in full (read by the store's own
client: the sqlite3 shell, rocksdict, plain sled), and the next restore must succeed, equal the
new state, and leave nothing beside the target. See docs/RELIABILITY.md.

usage: restore_kills.py sled|rocksdb|sqlite SYSCALLS   (e.g. fsync,fdatasync)
needs: as backup_kills.py, and the sqlite3 shell."""
import os, subprocess, sys, shutil, tempfile
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tidemark-target"))
BIN = os.environ.get("TIDEMARK_BIN", os.path.join(TARGET, "release", "tidemark"))
SLED = os.path.join(TARGET, "release", "examples", "plain_sled")
PY = os.environ.get("TIDEMARK_PYTHON", os.path.expanduser("~/.cache/tidemark-venv/bin/python"))
ROCKSAPP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                        "tidemark-cli", "tests", "support", "rocksapp.py")
kind, sc = sys.argv[1], sys.argv[2]
W = tempfile.mkdtemp(prefix=f"rs-{kind}-", dir=os.environ.get("TMPDIR", "/tmp"))
def run(a): return subprocess.run(a, capture_output=True, text=True)
def dump(p):
    if not os.path.exists(p): return None
    if kind == "sled": r = run([SLED, "dump", p])
    elif kind == "rocksdb": r = run([PY, ROCKSAPP, "dump", p])
    else: r = run(["sqlite3", p, ".dump"])
    assert r.returncode == 0, (p, r.stderr)
    return r.stdout
src = os.path.join(W, "src"); bk = os.path.join(W, "bk")
if kind == "sled":
    assert run([SLED, "write", src, "0"]).returncode == 0
elif kind == "rocksdb":
    assert run([PY, ROCKSAPP, "write", src, "0", "300", "--keep-wal"]).returncode == 0
else:
    assert run(["sqlite3", src, "create table t(id integer primary key, v text); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300) INSERT INTO t SELECT i, 'v'||i FROM n;"]).returncode == 0
assert run([BIN, "backup", "--source", f"{kind}:{src}", "--to", bk, "--format", "archive"]).returncode == 0
old = os.path.join(W, "old")
assert run([BIN, "restore", "--from", bk, "--to", f"{kind}:{old}"]).returncode == 0
if kind == "sled":
    assert run([SLED, "write", src, "1"]).returncode == 0
elif kind == "rocksdb":
    assert run([PY, ROCKSAPP, "write", src, "200", "300", "--keep-wal"]).returncode == 0
else:
    assert run(["sqlite3", src, "update t set v='new' where id%3=0; delete from t where id%7=0"]).returncode == 0
assert run([BIN, "backup", "--source", f"{kind}:{src}", "--to", bk]).returncode == 0
want_old, want_new = dump(old), dump(src)
assert want_old != want_new
problems = kills = 0
n = 1
while True:
    case = os.path.join(W, "case"); shutil.rmtree(case, ignore_errors=True); os.makedirs(case)
    tgt = os.path.join(case, "t")
    if os.path.isdir(old): shutil.copytree(old, tgt, symlinks=True)
    else: shutil.copy2(old, tgt)
    r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={sc}:signal=KILL:when={n}",
             BIN, "restore", "--from", bk, "--to", f"{kind}:{tgt}", "--force"])
    if r.returncode == 0:
        print(f"completed at n={n}: {n-1} kill points", flush=True); break
    kills += 1
    why = []
    got = dump(tgt)
    if got not in (want_old, want_new):
        why.append("target is neither old nor new" if got is not None else "target missing")
    r2 = run([BIN, "restore", "--from", bk, "--to", f"{kind}:{tgt}", "--force"])
    if r2.returncode != 0: why.append(f"next restore exit {r2.returncode}: {r2.stderr[-300:]}")
    elif dump(tgt) != want_new: why.append("next restore differs")
    left = [f for f in os.listdir(case) if f != "t"]
    if left: why.append(f"left: {left}")
    if why:
        problems += 1; print(f"PROBLEM n={n}: " + " | ".join(why), flush=True)
    n += 1
print(f"{kind} restore {sc}: {kills} kills, {problems} problems", flush=True)
