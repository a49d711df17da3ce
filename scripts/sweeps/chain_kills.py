#!/usr/bin/env python3
"""Kills `tidemark prune` or `tidemark compact` at the N-th call of a set of system calls
(strace's fault injection), for N = 1, 2, ... until a run completes, on a copy of one archive
chain of a tracked SQLite database (nine backups, the fifth of them full; each state recorded
with the `sqlite3` shell's `.dump` when it was backed up). After each kill
(`common.check_killed_chain`):

- verify calls the chain intact;
- every point `list --json` shows restores with `--at`, equal to the database at that point;
- nothing the completed command keeps is gone: the points listed include every point a run
  that was not killed leaves;
- the command run again completes, and then, after a change, the next backup (an
  incremental), verify, and a restore equal to the source; no temporary file is left.

Prints each problem and a total. See docs/RELIABILITY.md.

usage: chain_kills.py prune|compact|compact-keep SYSCALLS [MAX_N]
  (compact-keep: `compact --fanout 2 --keep-last 3`, which also removes archives)
  e.g. chain_kills.py compact rename,renameat,renameat2
needs: strace, the sqlite3 shell, `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN)."""
import os, shutil, sys, tempfile
from common import (BIN, run, sqlite_rounds, table_dump, chain_points, check_killed_chain,
                    kill_sweep)

cmd, sc = sys.argv[1], sys.argv[2]
maxn = int(sys.argv[3]) if len(sys.argv) > 3 else 10**6
ARGS = {
    "prune": ["prune", "--keep-last", "3"],
    "compact": ["compact", "--fanout", "2"],
    "compact-keep": ["compact", "--fanout", "2", "--keep-last", "3"],
}[cmd]
W = tempfile.mkdtemp(prefix=f"gs-chain-{cmd}-", dir=os.environ.get("TMPDIR", "/tmp"))


def ok(r, what):
    assert r.returncode == 0, (what, r.returncode, r.stderr)
    return r


def backup(src, dest, *extra):
    return run([BIN, "backup", "--source", f"sqlite:{src}", "--to", dest, "--format",
                "archive", *extra])


# The template: a tracked database and its chain, each backed-up state's dump by checkpoint.
tpl = os.path.join(W, "tpl")
os.makedirs(tpl)
src, dest = os.path.join(tpl, "src.db"), os.path.join(tpl, "bk")
sqlite_rounds(src, 0)
ok(run([BIN, "track", "--source", f"sqlite:{src}"]), "track")
states = {}
for rnd in range(1, 10):
    sqlite_rounds(src, rnd)
    ok(backup(src, dest, *(["--full"] if rnd == 5 else [])), f"backup {rnd}")
    at, err = chain_points(dest)
    assert err is None, err
    assert at[-1] not in states, at
    states[at[-1]] = table_dump(src)

# What a run that is not killed leaves.
done = os.path.join(W, "done")
shutil.copytree(tpl, done)
ok(run([BIN, *ARGS, os.path.join(done, "bk")]), "complete run")
kept, err = chain_points(os.path.join(done, "bk"))
assert err is None, err
print(f"{cmd}: {len(states)} points before, {len(kept)} after a complete run", flush=True)


def start_case(_n):
    case = os.path.join(W, "case")
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(tpl, case)
    return case


def check(case):
    csrc, cdest = os.path.join(case, "src.db"), os.path.join(case, "bk")
    why = check_killed_chain(cdest, case, kept, states, lambda: run([BIN, *ARGS, cdest]),
                             lambda: backup(csrc, cdest), csrc)
    left = [f for _, _, fs in os.walk(cdest) for f in fs if f.endswith(".tmp")]
    if left:
        why.append(f"temporary files left: {left}")
    return why


kill_sweep(cmd, sc, maxn, start_case, lambda case: [BIN, *ARGS, os.path.join(case, "bk")], check)
shutil.rmtree(W, ignore_errors=True)
