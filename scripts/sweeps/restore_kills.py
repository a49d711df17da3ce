#!/usr/bin/env python3
"""Kills `tidemark restore --force` over an existing database at the N-th call of a set of
system calls (strace's fault injection), for N = 1, 2, ... until a run completes. After each
kill the target must hold the old state or the new one in full (read by the store's own
client: the sqlite3 shell, rocksdict, plain sled), and the next restore must succeed, equal the
new state, and leave nothing beside the target. See docs/RELIABILITY.md.

usage: restore_kills.py sled|rocksdb|sqlite SYSCALLS   (e.g. fsync,fdatasync)
needs: as backup_kills.py, and the sqlite3 shell."""
import os, sys, shutil, tempfile
from common import BIN, run, write, dump
kind, sc = sys.argv[1], sys.argv[2]
W = tempfile.mkdtemp(prefix=f"rs-{kind}-", dir=os.environ.get("TMPDIR", "/tmp"))
src = os.path.join(W, "src"); bk = os.path.join(W, "bk")
write(kind, src, 0)
assert run([BIN, "backup", "--source", f"{kind}:{src}", "--to", bk, "--format", "archive"]).returncode == 0
old = os.path.join(W, "old")
assert run([BIN, "restore", "--from", bk, "--to", f"{kind}:{old}"]).returncode == 0
write(kind, src, 1)
assert run([BIN, "backup", "--source", f"{kind}:{src}", "--to", bk]).returncode == 0
want_old, want_new = dump(kind, old), dump(kind, src)
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
    got = dump(kind, tgt)
    if got not in (want_old, want_new):
        why.append("target is neither old nor new" if got is not None else "target missing")
    r2 = run([BIN, "restore", "--from", bk, "--to", f"{kind}:{tgt}", "--force"])
    if r2.returncode != 0: why.append(f"next restore exit {r2.returncode}: {r2.stderr[-300:]}")
    elif dump(kind, tgt) != want_new: why.append("next restore differs")
    left = [f for f in os.listdir(case) if f != "t"]
    if left: why.append(f"left: {left}")
    if why:
        problems += 1; print(f"PROBLEM n={n}: " + " | ".join(why), flush=True)
    n += 1
print(f"{kind} restore {sc}: {kills} kills, {problems} problems", flush=True)
