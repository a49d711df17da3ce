"""Data that reaches a RocksDB database's SST files without its WAL: random application
sessions (rocksdict's RocksDB 9.x, each opening and closing the database) of puts, deletes,
flushes, `IngestExternalFile` (into the keys' range or, most often at sequence number 0, a new
one), compactions (bottommost files too), and an archive backup after about one session in
two. Each backup's restore, read back with rocksdict, must equal the application's database.
"gap" marks runs after an ingest in a session that another open followed (the MANIFEST holding
its edits is gone): until the files' smallest sequence numbers were read, those restores could
lack keys. Prints the outcomes as (kind of run, restore equal, gap) and the problems.

    $TIDEMARK_PYTHON scripts/sweeps/rocksdb_sessions.py SEED ROUNDS [crash]

`crash`: about one session in four ends without closing the database (as a killed application:
its WAL is recovered by the next open, and its LOG may lack its last lines).

needs `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN) and rocksdict's Python."""
import json, os, sys, random, shutil, subprocess, tempfile
from rocksdict import Options, Rdict, SstFileWriter, CompactOptions, BottommostLevelCompaction
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as T
seed, rounds = (0, 0) if sys.argv[1] == "--session" else (int(sys.argv[1]), int(sys.argv[2]))
rnd = random.Random(seed)
W = None if sys.argv[1] == "--session" else tempfile.mkdtemp(prefix="rocksdb-sessions-")
src = W and W + "/src"
def o():
    x = Options(raw_mode=True); x.create_if_missing(True); x.set_wal_ttl_seconds(3600); return x
def state():
    db = Rdict(src, o()); d = {bytes(k): bytes(v) for k, v in db.items()}; db.close(); return d
def restored(n):
    p = f"{W}/r{n}"; shutil.rmtree(p, ignore_errors=True)
    x = subprocess.run([T, "restore", "--from", W + "/ar", "--to", "rocksdb:" + p], capture_output=True, text=True)
    assert x.returncode == 0, x.stderr
    db = Rdict(p, o()); d = {bytes(k): bytes(v) for k, v in db.items()}; db.close(); shutil.rmtree(p); return d
ingest_sessions_since = 0; sessions_after_ingest = False; problems = 0; gaps = 0; outcomes = {}
nsst = 0
def session(path, plan, crash):
    """Runs one application session (in a process of its own, so that it can end without
    closing the database, as a killed application does)."""
    db = Rdict(path, o())
    for step in plan:
        if step[0] == "put":
            for k, v in step[1]: db[bytes.fromhex(k)] = bytes.fromhex(v)
        elif step[0] == "del":
            for k in step[1]: del db[bytes.fromhex(k)]
        elif step[0] == "flush": db.flush()
        elif step[0] == "ingest":
            w = SstFileWriter(o()); w.open(step[1])
            for k, v in step[2]: w[bytes.fromhex(k)] = bytes.fromhex(v)
            w.finish(); db.ingest_external_file([step[1]]); os.remove(step[1])
        elif step[0] == "compact": db.compact_range(None, None)
        else:
            c = CompactOptions(); c.set_bottommost_level_compaction(BottommostLevelCompaction.force()); db.compact_range(None, None, c)
    if crash:
        sys.stdout.flush(); os._exit(0)
    db.close()
if sys.argv[1] == "--session":
    session(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "crash")
    sys.exit(0)
crashes = "crash" in sys.argv[3:]
killed = 0
for r in range(rounds):
    if ingest_sessions_since: sessions_after_ingest = True
    ingested = False
    plan = []
    for step in range(rnd.randint(1, 5)):
        a = rnd.choice(["put", "put", "del", "flush", "ingest", "ingest", "compact", "compactforce"])
        if a == "put":
            plan.append(["put", [[(b"k%04d" % rnd.randrange(500)).hex(), os.urandom(rnd.choice([5, 50])).hex()] for i in range(rnd.randint(1, 50))]])
        elif a == "del":
            plan.append(["del", [(b"k%04d" % rnd.randrange(500)).hex() for i in range(rnd.randint(1, 20))]])
        elif a == "ingest":
            nsst += 1
            base = rnd.choice([b"k", b"z%02d" % nsst])  # overlapping or (likely) an empty range
            keys = sorted({base + b"%04d" % rnd.randrange(500) for _ in range(rnd.randint(1, 30))})
            plan.append(["ingest", f"{W}/x{nsst}.sst", [[k.hex(), (b"ing" + os.urandom(4)).hex()] for k in keys]])
            ingested = True
        else:
            plan.append([a])
    crash = crashes and rnd.random() < 0.25
    killed += crash
    x = subprocess.run([sys.executable, os.path.abspath(__file__), "--session", src, json.dumps(plan), "crash" if crash else "close"], capture_output=True, text=True)
    assert x.returncode == 0, x.stderr
    if ingested: ingest_sessions_since += 1; sessions_after_ingest = False
    if rnd.random() < 0.5 or r == rounds - 1:
        x = subprocess.run([T, "backup", "--source", "rocksdb:" + src, "--to", W + "/ar", "--format", "archive"], capture_output=True, text=True)
        assert x.returncode == 0, x.stderr
        kind = "diff" if "diff-based" in x.stdout else ("full" if "(full" in x.stdout else "wal")
        want = state()  # (opens the database: a session, but after the backup)
        got = restored(r)
        gap = ingest_sessions_since > 0 and sessions_after_ingest
        key = (kind, got == want, gap); outcomes[key] = outcomes.get(key, 0) + 1
        gaps += gap
        if got != want:
            problems += 1; print("PROBLEM round", r, kind, gap, len(got), len(want), x.stderr[-300:])
        ingest_sessions_since = 0; sessions_after_ingest = False
        # the dump's own open counts as a session after the backup (not after an ingest)
print("seed", seed, "outcomes", outcomes, "gaps", gaps, "sessions killed", killed, "problems", problems)
shutil.rmtree(W)
