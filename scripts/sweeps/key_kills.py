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
from common import BIN, run, write, dump, age_identity, kill_sweep

sc, mode = sys.argv[1], sys.argv[2]
W = tempfile.mkdtemp(prefix=f"kk-{mode}-", dir=os.environ.get("TMPDIR", "/tmp"))
src = os.path.join(W, "src.db")
bk = os.path.join(W, "bk")
key_file, copy = os.path.join(bk, ".tidemark-key"), os.path.join(bk, ".tidemark-key.copy")
write("sqlite", src, 0)
identity = os.path.join(W, "id.txt")
make = ["--encrypt-recipient", age_identity(identity)]
opened = ["--encrypt-identity", identity]


def backup_args(keys):
    return [BIN, "backup", "--source", f"sqlite:{src}", "--to", bk, "--format", "archive"] + keys


def start_case(n):
    """A fresh destination: empty (`first`), or a chain whose key file is damaged (`repair`)."""
    shutil.rmtree(bk, ignore_errors=True)
    if mode == "repair":
        assert run(backup_args(make + opened)).returncode == 0
        bad = bytearray(open(key_file, "rb").read())
        bad[len(bad) // 2] ^= 4
        open(key_file, "wb").write(bad)
        write("sqlite", src, n)
    return n


def command(n):
    return backup_args(opened if mode == "repair" else make + opened)


def check(n):
    why = []
    if mode == "repair":
        r = run([BIN, "restore", "--from", bk, "--to", f"sqlite:{W}/k{n}.db"] + opened)
        if r.returncode != 0:
            why.append(f"a restore after the kill failed: {r.stderr[-300:]}")
    else:
        v = run([BIN, "verify", bk] + opened)
        if v.returncode != 0 and "holds no tidemark backup" not in v.stderr:
            why.append(f"verify after the kill: exit {v.returncode}: {v.stderr[-300:]}")
    started = os.path.exists(key_file) or os.path.exists(copy)
    again = run(backup_args(opened if started else make + opened))
    v = run([BIN, "verify", bk] + opened)
    r = run([BIN, "restore", "--from", bk, "--to", f"sqlite:{W}/r{n}.db"] + opened)
    if again.returncode != 0 or v.returncode != 0:
        why.append(f"then: backup exit {again.returncode}, verify exit {v.returncode}: "
                   f"{again.stderr[-300:]} {v.stderr[-300:]}")
    if r.returncode != 0 or dump("sqlite", f"{W}/r{n}.db") != dump("sqlite", src):
        why.append(f"then: the restore is not the source: {r.stderr[-300:]}")
    if not (os.path.exists(key_file) and os.path.exists(copy)
            and open(key_file, "rb").read() == open(copy, "rb").read()):
        why.append("then: the key file and its copy are not the same bytes")
    tmps = [f for f in os.listdir(bk) if f.endswith(".tmp")]
    if tmps:
        why.append(f"then: left {tmps}")
    return why


problems = kill_sweep(f"backup ({mode})", sc, 10**6, start_case, command, check)
shutil.rmtree(W)
sys.exit(1 if problems else 0)
