#!/usr/bin/env python3
"""Kills `tidemark backup` of an encrypted chain (sealed to an age recipient) at the N-th call
of a set of system calls (strace's fault injection), for N = 1, 2, ... until a run completes:
`first`, the backup that makes the chain (its key file, the key file's copy, the first
archive); `repair`, a backup that writes a damaged key file again from its copy (a byte of
`.tidemark-key` flipped before it). After each kill: in `first`, verify with the identity
calls the chain intact or holds no backup yet; in `repair`, a restore succeeds (the copy is
intact whatever the kill left). Then a backup, verify and a restore equal to the source (the
sqlite3 shell's dump) all succeed, the key file and its copy are the same bytes, and no
`*.tmp` is left. Prints each problem and a total.

usage: key_kills.py SYSCALLS first|repair
  e.g. key_kills.py rename,renameat,renameat2 repair
needs: strace, the sqlite3 shell, and `cargo build --release -p tidemark-cli` or TIDEMARK_BIN."""
import os, sys, shutil, tempfile
from common import BIN, run, write, dump, age_identity

sc, mode = sys.argv[1], sys.argv[2]
W = tempfile.mkdtemp(prefix=f"kk-{mode}-", dir=os.environ.get("TMPDIR", "/tmp"))
src = os.path.join(W, "src.db")
bk = os.path.join(W, "bk")
key_file, copy = os.path.join(bk, ".tidemark-key"), os.path.join(bk, ".tidemark-key.copy")
write("sqlite", src, 0)
identity = os.path.join(W, "id.txt")
make = ["--encrypt-recipient", age_identity(identity)]
opened = ["--encrypt-identity", identity]


def backup(extra, kill_at=None):
    args = [BIN, "backup", "--source", f"sqlite:{src}", "--to", bk, "--format", "archive"] + extra
    if kill_at:
        args = ["strace", "-f", "-o", "/dev/null",
                "-e", f"inject={sc}:signal=KILL:when={kill_at}"] + args
    return run(args)


problems, n = 0, 0
while True:
    n += 1
    shutil.rmtree(bk, ignore_errors=True)
    if mode == "repair":
        assert backup(make + opened).returncode == 0
        bad = bytearray(open(key_file, "rb").read())
        bad[len(bad) // 2] ^= 4
        open(key_file, "wb").write(bad)
        write("sqlite", src, n)
        killed = backup(opened, kill_at=n)
        r = run([BIN, "restore", "--from", bk, "--to", f"sqlite:{W}/k{n}.db"] + opened)
        if r.returncode != 0:
            problems += 1
            print(n, "PROBLEM: a restore after the killed repair failed:", r.stderr[-300:])
    else:
        killed = backup(make + opened, kill_at=n)
        v = run([BIN, "verify", bk] + opened)
        if v.returncode != 0 and "holds no tidemark backup" not in v.stderr:
            problems += 1
            print(n, "PROBLEM: verify after the kill:", v.returncode, v.stderr[-300:])
    started = os.path.exists(key_file) or os.path.exists(copy)
    again = backup(opened if started else make + opened)
    v = run([BIN, "verify", bk] + opened)
    r = run([BIN, "restore", "--from", bk, "--to", f"sqlite:{W}/r{n}.db"] + opened)
    same = r.returncode == 0 and dump("sqlite", f"{W}/r{n}.db") == dump("sqlite", src)
    twins = (os.path.exists(key_file) and os.path.exists(copy)
             and open(key_file, "rb").read() == open(copy, "rb").read())
    tmps = [f for f in os.listdir(bk) if f.endswith(".tmp")]
    if not (again.returncode == 0 and v.returncode == 0 and same and twins and not tmps):
        problems += 1
        print(n, "PROBLEM after:", again.returncode, v.returncode, same, twins, tmps,
              again.stderr[-300:], v.stderr[-300:])
    done = killed.returncode == 0
    print(n, "completed" if done else "killed", flush=True)
    if done:
        break
print("PROBLEMS", problems)
shutil.rmtree(W)
