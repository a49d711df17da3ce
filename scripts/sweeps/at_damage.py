#!/usr/bin/env python3
"""Damage against point-in-time restores: a tracked SQLite database backed up nine times (the
fifth full), each state dumped with the `sqlite3` shell and keyed by its checkpoint and by its
capture time. Each trial copies the chain, then flips a bit in, truncates or deletes one or two
random archives, runs verify, and restores every point with `--at`, by checkpoint and by time.
A restore must give exactly the state of the point asked for (exit 0) or refuse (exit 1 or 3);
what verify calls intact must restore. Prints each problem and the outcomes.

usage: at_damage.py SEED TRIALS [compact] [encrypted] [large]
  compact: `tidemark compact --fanout 2` after the backups, so that the chain also holds
  compacted archives (each covering several backups) that restores may take
  encrypted: the chain is sealed to an age recipient (every command gets the identity), and a
  trial may also flip a bit in the key file or its copy
  large: each backup also changes a BLOB of 1.1 MB (4.3 MB in the first and the fifth), which
  archives keep apart from its line in value entries: most flipped bits land in those
needs: the sqlite3 shell, `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN).
See docs/RELIABILITY.md."""
import json, os, random, shutil, subprocess, sys, tempfile
from common import BIN as B, age_identity
seed, trials = int(sys.argv[1]), int(sys.argv[2])
COMPACT = "compact" in sys.argv[3:]
ENCRYPTED = "encrypted" in sys.argv[3:]
LARGE = "large" in sys.argv[3:]
rnd = random.Random(seed)
W = tempfile.mkdtemp(prefix="atfuzz-")
# The key state of an encrypted chain lives in the cache, kept inside the work directory.
ENV = dict(os.environ, XDG_CACHE_HOME=os.path.join(W, "cache"))
KEY = ["--encrypt-identity", os.path.join(W, "id.txt")] if ENCRYPTED else []
MAKE = ["--encrypt-recipient", age_identity(os.path.join(W, "id.txt"))] if ENCRYPTED else []
READS = ("verify", "list", "restore", "compact", "backup")
def run(a):
    if a[0] == B and a[1] in READS: a = a + KEY
    return subprocess.run(a, capture_output=True, text=True, cwd=W, env=ENV)
def sql(db, s): r = run(["sqlite3", db, s]); assert r.returncode == 0, r.stderr
def dump(db): return run(["sqlite3", db, ".dump t"]).stdout
sql("src.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<400) INSERT INTO t(id, v) SELECT i, 'v'||i FROM n;")
assert run([B, "track", "--source", "sqlite:src.db"]).returncode == 0
states = {}; times = {}
for r in range(1, 9):
    sql("src.db", f"UPDATE t SET v='r{r}' WHERE id % 4 = {r % 4}; DELETE FROM t WHERE id % 31 = {r}; INSERT INTO t(v) VALUES ('n{r}');")
    if LARGE:
        sql("src.db", f"UPDATE t SET b = randomblob({4300000 if r in (1, 5) else 1100000}) WHERE id = {100 + r};")
    x = run([B, "backup", "--source", "sqlite:src.db", "--to", "bk", "--format", "archive"] + (["--full"] if r == 5 else []) + (MAKE if r == 1 else []))
    assert x.returncode == 0, x.stderr
    rows = [json.loads(l) for l in run([B, "list", "bk", "--json"]).stdout.splitlines()]
    last = [x for x in rows if x.get("type") == "archive"][-1]
    states[last["to"]] = dump("src.db"); times[last["captured_at"]] = states[last["to"]]
if COMPACT:
    x = run([B, "compact", "bk", "--fanout", "2"])
    assert x.returncode == 0, x.stderr
problems = 0; outcomes = {}
for t in range(trials):
    shutil.rmtree(os.path.join(W, "c"), ignore_errors=True)
    shutil.copytree(os.path.join(W, "bk"), os.path.join(W, "c"))
    files = sorted(f for f in os.listdir(os.path.join(W, "c")) if f.endswith(".zip"))
    ops = []
    for _ in range(rnd.choice([1, 1, 2])):
        f = os.path.join(W, "c", rnd.choice(files))
        b = bytearray(open(f, "rb").read())
        what = rnd.choice(["flip", "flip", "trunc", "delete"] + (["keyflip"] if ENCRYPTED else []))
        if what == "keyflip":
            f = os.path.join(W, "c", rnd.choice([".tidemark-key", ".tidemark-key.copy"]))
            b = bytearray(open(f, "rb").read()); what = "flip"
        ops.append((what, os.path.basename(f)[:19]))
        if what == "flip":
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8); open(f, "wb").write(b)
        elif what == "trunc":
            open(f, "wb").write(b[:rnd.randrange(len(b))])
        else:
            os.remove(f)
            if os.path.basename(f) in files: files.remove(os.path.basename(f))
            if not files: break
    v = run([B, "verify", "c"]).returncode
    for kind, pts in (("cp", states), ("time", times)):
        for p, want in pts.items():
            if os.path.exists(os.path.join(W, "o.db")): os.remove(os.path.join(W, "o.db"))
            r = run([B, "restore", "--from", "c", "--to", "sqlite:o.db", "--at", str(p)])
            key = (kind, r.returncode); outcomes[key] = outcomes.get(key, 0) + 1
            if r.returncode == 0:
                if dump(os.path.join(W, "o.db")) != want:
                    problems += 1; print("WRONG DATA", t, ops, kind, p, [k for k, w in pts.items() if w == dump(os.path.join(W, "o.db"))], r.stdout.splitlines()[1][:80] if len(r.stdout.splitlines()) > 1 else "", r.stderr[-150:])
            elif r.returncode not in (1, 3):
                problems += 1; print("EXIT", r.returncode, t, kind, p, r.stderr[-300:])
            elif v == 0:
                problems += 1; print("verify 0 but restore refused", t, kind, p, r.stderr[-200:])
print("outcomes", outcomes, "problems", problems)
shutil.rmtree(W)
