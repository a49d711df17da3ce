"""Data that reaches a RocksDB database's SST files without its WAL: random application
sessions (rocksdict's RocksDB 9.x, each opening and closing the database) of puts, deletes,
flushes, `IngestExternalFile` (into the keys' range or, most often at sequence number 0, a new
one), compactions (bottommost files too), and an archive backup after about one session in
two. Each backup's restore, read back with rocksdict, must equal the application's database.
"gap" marks runs after an ingest in a session that another open followed (the MANIFEST holding
its edits is gone): until the files' smallest sequence numbers were read, those restores could
lack keys. Prints the outcomes as (kind of run, restore equal, gap) and the problems.

    $TIDEMARK_PYTHON scripts/sweeps/rocksdb_sessions.py SEED ROUNDS

needs `cargo build --release -p tidemark-cli` (or TIDEMARK_BIN) and rocksdict's Python."""
import os, sys, random, shutil, subprocess, tempfile
from rocksdict import Options, Rdict, SstFileWriter, CompactOptions, BottommostLevelCompaction
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as T
seed, rounds = int(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(seed)
W = tempfile.mkdtemp(prefix="rocksdb-sessions-")
src = W + "/src"
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
for r in range(rounds):
    db = Rdict(src, o())
    if ingest_sessions_since: sessions_after_ingest = True
    ingested = False
    for step in range(rnd.randint(1, 5)):
        a = rnd.choice(["put", "put", "del", "flush", "ingest", "ingest", "compact", "compactforce"])
        if a == "put":
            for i in range(rnd.randint(1, 50)): db[b"k%04d" % rnd.randrange(500)] = os.urandom(rnd.choice([5, 50]))
        elif a == "del":
            for i in range(rnd.randint(1, 20)): del db[b"k%04d" % rnd.randrange(500)]
        elif a == "flush": db.flush()
        elif a == "ingest":
            nsst += 1; sst = f"{W}/x{nsst}.sst"; w = SstFileWriter(o()); w.open(sst)
            base = rnd.choice([b"k", b"z%02d" % nsst])  # overlapping or (likely) an empty range
            keys = sorted({base + b"%04d" % rnd.randrange(500) for _ in range(rnd.randint(1, 30))})
            for k in keys: w[k] = b"ing" + os.urandom(4)
            w.finish(); db.ingest_external_file([sst]); os.remove(sst); ingested = True
        elif a == "compact": db.compact_range(None, None)
        else:
            c = CompactOptions(); c.set_bottommost_level_compaction(BottommostLevelCompaction.force()); db.compact_range(None, None, c)
    db.close()
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
print("seed", seed, "outcomes", outcomes, "gaps", gaps, "problems", problems)
shutil.rmtree(W)
