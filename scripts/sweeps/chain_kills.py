#!/usr/bin/env python3
"""Kills `tidemark prune` or `tidemark compact` at the N-th call of a set of system calls
(strace's fault injection), for N = 1, 2, ... until a run completes, on a copy of one archive
chain of a tracked SQLite database (nine backups, the fifth of them full; each state recorded
with the `sqlite3` shell's `.dump` when it was backed up). After each kill:

- verify calls the chain intact;
- every point `list --json` shows restores with `--at`, equal to the database at that point,
  and the newest equals the source;
- nothing the completed command keeps is gone: the points listed include every point a run
  that was not killed leaves;
- the command run again completes, and then verify is intact, no temporary file is left,
  and after a change the next backup (an incremental) restores equal to the source.

Prints each problem and a total. See docs/RELIABILITY.md.

usage: chain_kills.py prune|compact|compact-keep SYSCALLS [MAX_N]
  (compact-keep: `compact --fanout 2 --keep-last 3`, which also removes archives)
  e.g. chain_kills.py compact rename,renameat,renameat2
needs: strace, the sqlite3 shell, `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN)."""
import json, os, shutil, sys, tempfile
from common import BIN, run


def write(path, rnd):
    """Round 0 creates table t; each later round updates, deletes and inserts some rows."""
    if rnd == 0:
        sql = ("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); "
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
               "INSERT INTO t SELECT i, 'v' || i FROM n;")
    else:
        sql = (f"UPDATE t SET v = 'r{rnd}' WHERE id % 5 = {rnd % 5}; "
               f"DELETE FROM t WHERE id % 29 = {rnd % 29}; "
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) "
               f"INSERT INTO t(v) SELECT 'n{rnd}-' || i FROM n;")
    ok(run(["sqlite3", path, sql]), "write")


def dump(_kind, path):
    """Table t as the sqlite3 shell dumps it (the source also holds tidemark's change log and
    triggers, which a restore leaves out)."""
    if not os.path.exists(path):
        return None
    return ok(run(["sqlite3", path, ".dump t"]), "dump").stdout

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


def points(dest):
    """The checkpoints (`to`) of the archives `list --json` shows, or the error."""
    r = run([BIN, "list", dest, "--json"])
    if r.returncode != 0:
        return None, r.stderr.strip()[-300:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return sorted({row["to"] for row in rows if row.get("type") == "archive"}), None


def backup(src, dest, *extra):
    return run([BIN, "backup", "--source", f"sqlite:{src}", "--to", dest, "--format",
                "archive", *extra])


# The template: a tracked database and its chain, each backed-up state's dump by checkpoint.
tpl = os.path.join(W, "tpl")
os.makedirs(tpl)
src, dest = os.path.join(tpl, "src.db"), os.path.join(tpl, "bk")
write(src, 0)
ok(run([BIN, "track", "--source", f"sqlite:{src}"]), "track")
states = {}
for rnd in range(1, 10):
    write(src, rnd)
    ok(backup(src, dest, *(["--full"] if rnd == 5 else [])), f"backup {rnd}")
    at, err = points(dest)
    assert err is None, err
    assert at[-1] not in states, at
    states[at[-1]] = dump("sqlite", src)

# What a run that is not killed leaves.
done = os.path.join(W, "done")
shutil.copytree(tpl, done)
ok(run([BIN, *ARGS, os.path.join(done, "bk")]), "complete run")
kept, err = points(os.path.join(done, "bk"))
assert err is None, err
print(f"{cmd}: {len(states)} points before, {len(kept)} after a complete run", flush=True)

problems = 0
total = 0
n = 1
while n <= maxn:
    case = os.path.join(W, "case")
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(tpl, case)
    csrc, cdest = os.path.join(case, "src.db"), os.path.join(case, "bk")
    r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e",
             f"inject={sc}:signal=KILL:when={n}", BIN, *ARGS, cdest])
    if r.returncode == 0:
        print(f"{cmd}: completed at n={n}: {n - 1} kill points", flush=True)
        break
    total += 1
    why = []
    if r.returncode not in (137, -9) and "Killed" not in r.stderr:
        why.append(f"{cmd} exit {r.returncode}: {r.stderr.strip()[-300:]}")
    v = run([BIN, "verify", cdest])
    if v.returncode != 0:
        why.append(f"verify after kill: exit {v.returncode}: {v.stderr.strip()[-300:]}")
    at, err = points(cdest)
    if err:
        why.append(f"list after kill: {err}")
    else:
        lost = [p for p in kept if p not in at]
        if lost:
            why.append(f"points a complete run keeps are gone: {lost}")
        for p in at:
            t = os.path.join(case, f"at-{p}.db")
            rr = run([BIN, "restore", "--from", cdest, "--to", f"sqlite:{t}", "--at", str(p)])
            if rr.returncode != 0:
                why.append(f"restore --at {p}: exit {rr.returncode}: {rr.stderr.strip()[-200:]}")
            elif dump("sqlite", t) != states.get(p):
                why.append(f"restore --at {p} differs from the database at that point")
    again = run([BIN, *ARGS, cdest])
    if again.returncode != 0:
        why.append(f"{cmd} again: exit {again.returncode}: {again.stderr.strip()[-300:]}")
    write(csrc, 10)
    b = backup(csrc, cdest)
    if b.returncode != 0 or "incremental" not in b.stdout:
        why.append(f"next backup: exit {b.returncode}: {(b.stdout + b.stderr).strip()[-300:]}")
    v2 = run([BIN, "verify", cdest])
    if v2.returncode != 0:
        why.append(f"verify after the next backup: exit {v2.returncode}: {v2.stderr.strip()[-300:]}")
    t = os.path.join(case, "newest.db")
    rr = run([BIN, "restore", "--from", cdest, "--to", f"sqlite:{t}"])
    if rr.returncode != 0:
        why.append(f"restore: exit {rr.returncode}: {rr.stderr.strip()[-300:]}")
    elif dump("sqlite", t) != dump("sqlite", csrc):
        why.append("restore differs from the source")
    left = [f for _, _, fs in os.walk(cdest) for f in fs if f.endswith(".tmp")]
    if left:
        why.append(f"temporary files left: {left}")
    if why:
        problems += 1
        print(f"PROBLEM n={n}: " + " | ".join(why), flush=True)
    n += 1
print(f"{cmd} {sc}: {total} kills, {problems} problems", flush=True)
shutil.rmtree(W, ignore_errors=True)
