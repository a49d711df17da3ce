"""RocksDB paths besides ingestion, each through rocksdict (the application's own RocksDB 9.x):
a column family created and filled, then compacted into the last level and the database
reopened; writes with `disable_wal`; `delete_range`; sessions that keep no WAL files; plain
writes. After each, an archive backup and a restore read back with rocksdict: prints how the
run went (incremental, diff-based) and whether the restore equals the application's database.

    $TIDEMARK_PYTHON scripts/sweeps/rocksdb_paths.py

needs `cargo build --release -p tidemark-cli --all-features` (or TIDEMARK_BIN) and rocksdict."""
import os, shutil, subprocess, sys, tempfile
from rocksdict import Rdict, Options, WriteOptions, WriteBatch, CompactOptions, BottommostLevelCompaction
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as T
W = tempfile.mkdtemp(prefix="probe-"); src = W + "/src"
def o(ttl=True):
    x = Options(raw_mode=True); x.create_if_missing(True); x.create_missing_column_families(True)
    if ttl: x.set_wal_ttl_seconds(3600)
    return x
def opendb(ttl=True):
    cfs = Rdict.list_cf(src) if os.path.exists(src + "/CURRENT") else ["default"]
    return Rdict(src, o(ttl), column_families={n: o(ttl) for n in cfs if n != "default"})
def dump(p):
    cfs = Rdict.list_cf(p)
    db = Rdict(p, o(), column_families={n: o() for n in cfs if n != "default"})
    out = {}
    for n in cfs:
        cf = db if n == "default" else db.get_column_family(n)
        out[n] = {bytes(k): bytes(v) for k, v in cf.items()}
        del cf
    db.close(); return out
n = 0
problems = []
def backup(label):
    global n
    n += 1
    x = subprocess.run([T, "backup", "--source", "rocksdb:" + src, "--to", W + "/ar", "--format", "archive"], capture_output=True, text=True)
    assert x.returncode == 0, x.stderr
    p = W + "/r%d" % n
    r = subprocess.run([T, "restore", "--from", W + "/ar", "--to", "rocksdb:" + p], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ok = dump(p) == dump(src)
    kind = [l for l in x.stdout.splitlines() if l.startswith("Backup (")][0].split(" of ")[0]
    print(f"{label:45s} {kind:40s} {'EQUAL' if ok else 'DIFFERENT'}")
    if not ok:
        print(x.stdout, x.stderr)
        problems.append(label)
db = opendb()
for i in range(1000): db[b"k%05d" % i] = os.urandom(50)
db.close()
backup("initial")
# 1. a new column family, filled, then reopened and compacted
db = opendb(); cf = db.create_column_family("extra", o())
for i in range(500): cf[b"e%05d" % i] = os.urandom(30)
del cf
db.close()
db = opendb(); c = CompactOptions(); c.set_bottommost_level_compaction(BottommostLevelCompaction.force())
db.compact_range(None, None, c); e = db.get_column_family("extra"); e.compact_range(None, None, c); del e; db.close()
backup("new column family, compacted, reopened")
# 2. writes without the WAL, then flush
db = opendb(); wo = WriteOptions(); wo.disable_wal = True
wb = WriteBatch(raw_mode=True)
for i in range(100): wb.put(b"nowal%03d" % i, b"x")
db.write(wb, wo); db.flush(); db.close()
backup("writes without the WAL, flushed")
# 3. delete_range
db = opendb(); db.delete_range(b"k00100", b"k00200"); db.close()
backup("delete_range")
# 4. WAL not kept (default TTL), several sessions with flushes and compaction
for s in range(3):
    db = opendb(False)
    for i in range(300): db[b"k%05d" % ((s * 300 + i) % 1000)] = os.urandom(40)
    db.flush(); db.close()
backup("WAL not kept, three sessions")
# 5. plain session after all that
db = opendb()
for i in range(50): db[b"late%03d" % i] = b"y"
db.close()
backup("plain writes")
shutil.rmtree(W)
print("PROBLEMS", len(problems))
