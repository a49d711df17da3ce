"""What a RocksDB application that restarts between backups costs: SESSIONS sessions (each an
open, 3,000 random 100-byte puts over 60,000 keys, a close; small memtables and levels so that
compactions reach the last level) before each of BACKUPS archive backups. Counts how the runs
went (full, wal, diff: a diff-based run compares every record) and checks each restore, read
back with rocksdict, against the application's database (whose own open is one more session).
After a reopen, the MANIFEST no longer tells a compaction's output at sequence number 0 from an
ingested file's; the info LOG does (backend-rocksdb's infolog.rs), so these runs read the WAL.

    $TIDEMARK_PYTHON scripts/sweeps/rocksdb_restarts.py SEED SESSIONS BACKUPS

needs `cargo build --release -p tidemark-cli --all-features` (or TIDEMARK_BIN) and rocksdict."""
import os
import random
import shutil
import subprocess
import sys
import tempfile

from rocksdict import Options, Rdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as T

seed, sessions, backups = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
W = tempfile.mkdtemp(prefix="rocksdb-restarts-")
src = W + "/src"


def o():
    x = Options(raw_mode=True)
    x.create_if_missing(True)
    x.set_wal_ttl_seconds(3600)
    x.set_write_buffer_size(256 << 10)
    x.set_target_file_size_base(256 << 10)
    x.set_max_bytes_for_level_base(1 << 20)
    return x


def dump(p):
    db = Rdict(p, o())
    d = {bytes(k): bytes(v) for k, v in db.items()}
    db.close()
    return d


kinds = {}
wrong = 0
for b in range(backups):
    for s in range(sessions):
        db = Rdict(src, o())
        for i in range(3000):
            db[b"k%06d" % rnd.randrange(60000)] = os.urandom(100)
        db.close()
    x = subprocess.run([T, "backup", "--source", "rocksdb:" + src, "--to", W + "/ar",
                        "--format", "archive"], capture_output=True, text=True)
    assert x.returncode == 0, x.stderr
    kind = "full" if "(full" in x.stdout else ("diff" if "diff-based" in x.stdout else "wal")
    kinds[kind] = kinds.get(kind, 0) + 1
    p = W + "/r"
    shutil.rmtree(p, ignore_errors=True)
    r = subprocess.run([T, "restore", "--from", W + "/ar", "--to", "rocksdb:" + p],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if dump(p) != dump(src):
        wrong += 1
        print("WRONG restore after backup", b, kind)
print("seed", seed, "sessions a backup", sessions, "runs", kinds, "wrong restores", wrong)
shutil.rmtree(W)
