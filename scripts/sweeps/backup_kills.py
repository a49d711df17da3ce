#!/usr/bin/env python3
"""Kills `tidemark backup` at the N-th call of a set of system calls (strace's fault
injection), for N = 1, 2, ... until a run completes, in each of three runs (full, then two
incrementals) of a store written by an independent client (rocksdict's RocksDB, or plain sled
through backend-sled's `plain_sled` example). After each kill: the source's content (read by
its own client) and, for RocksDB, every file's hash are unchanged; verify either calls the
backup intact (and restore then succeeds) or refuses it as interrupted / not yet a backup; the
next backup succeeds, verify calls it intact, and a restore read back by the store's client
equals the source. Prints each problem and a total. See docs/RELIABILITY.md.

usage: backup_kills.py sled|rocksdb archive|folder SYSCALLS [MAX_N]
  e.g. backup_kills.py sled archive rename,renameat,renameat2
needs: strace; `cargo build --release -p tidemark-cli` (every backend: scripts/demo.sh leaves
a SQLite-only binary in the same place) or TIDEMARK_BIN, and
`cargo build --release -p backend-sled --example plain_sled`; for RocksDB, rocksdict in
$TIDEMARK_PYTHON (scripts/test.sh installs it)."""
import os, sys, shutil, hashlib, tempfile
from common import BIN, run, write, dump, kill_sweep
kind, fmt, sc = sys.argv[1], sys.argv[2], sys.argv[3]
maxn = int(sys.argv[4]) if len(sys.argv) > 4 else 10**6
W = tempfile.mkdtemp(prefix=f"gs-{kind}-{fmt}-", dir=os.environ.get("TMPDIR", "/tmp"))

def hashes(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out

def backup(src, dest, pre=()):
    args = list(pre) + [BIN, "backup", "--source", f"{kind}:{src}", "--to", dest]
    if fmt == "archive":
        args += ["--format", "archive"]
    return run(args)

# Templates: before step s, source written with round s, destination after steps < s.
tpl = []
base = os.path.join(W, "tpl")
os.makedirs(base)
src, dest = os.path.join(base, "src"), os.path.join(base, "dest")
for s in range(3):
    write(kind, src, s)
    d = os.path.join(W, f"t{s}")
    shutil.copytree(base, d, symlinks=True)
    tpl.append(d)
    r = backup(src, dest)
    assert r.returncode == 0, r.stderr


def start_case(s):
    """A fresh copy of step `s`'s template, with the source's content (and, for RocksDB, its
    files' hashes) before the kill."""
    def start(n):
        case = os.path.join(W, "case")
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(tpl[s], case, symlinks=True)
        src = os.path.join(case, "src")
        return {"dir": case, "src": src, "dest": os.path.join(case, "dest"),
                "dump": dump(kind, src), "hash": hashes(src) if kind == "rocksdb" else None}
    return start


def command(case):
    args = [BIN, "backup", "--source", f"{kind}:{case['src']}", "--to", case["dest"]]
    return args + (["--format", "archive"] if fmt == "archive" else [])


def check(case):
    csrc, cdest = case["src"], case["dest"]
    why = []
    if kind == "rocksdb" and hashes(csrc) != case["hash"]:
        why.append("source files changed")
    v = run([BIN, "verify", cdest])
    ok_v = v.returncode == 0 or (v.returncode == 3 and "interrupted" in v.stderr) or \
        (v.returncode == 1 and ("holds no tidemark backup" in v.stderr
                                or "no such backup directory" in v.stderr))
    if not ok_v:
        why.append(f"verify after kill: exit {v.returncode}: {v.stderr.strip()[-300:]}")
    if v.returncode == 0:
        # What verify calls whole must restore.
        t = os.path.join(case["dir"], "r0")
        rr = run([BIN, "restore", "--from", cdest, "--to", f"{kind}:{t}"])
        if rr.returncode != 0:
            why.append(f"verify 0 but restore exit {rr.returncode}: {rr.stderr.strip()[-300:]}")
    if dump(kind, csrc) != case["dump"]:
        why.append("source content changed")
    r2 = backup(csrc, cdest)
    if r2.returncode != 0:
        why.append(f"next backup exit {r2.returncode}: {r2.stderr.strip()[-300:]}")
    v2 = run([BIN, "verify", cdest])
    if v2.returncode != 0:
        why.append(f"verify after repair exit {v2.returncode}: {v2.stderr.strip()[-300:]}")
    t = os.path.join(case["dir"], "r1")
    rr = run([BIN, "restore", "--from", cdest, "--to", f"{kind}:{t}"])
    if rr.returncode != 0:
        why.append(f"restore exit {rr.returncode}: {rr.stderr.strip()[-300:]}")
    elif dump(kind, t) != dump(kind, csrc):
        why.append("restored content differs")
    return why


problems = sum(kill_sweep(f"{kind} {fmt} step {s}", sc, maxn, start_case(s), command, check)
               for s in range(3))
print(f"{kind} {fmt} {sc}: {problems} problems", flush=True)
