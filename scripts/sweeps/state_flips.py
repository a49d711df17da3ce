"""One bit flipped in a file of tidemark's own state (the key state, the chain head, the format
marker, a folder's manifest), then more changes and the next backup: it must notice (a full
backup) or be unaffected, and verify and a restore must then give the source's rows exactly
(read with Python's sqlite3).

    python3 scripts/sweeps/state_flips.py SEED TRIALS archive|folder

The source is in WAL mode; SWEEP_JOURNAL=DELETE puts it in rollback-journal mode, where an
incremental lets its read go before it writes (and a damaged state is found after that).
"""
import subprocess, random, os, sys, shutil, sqlite3, glob, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as B
random.seed(int(sys.argv[1])); N = int(sys.argv[2]); FMT = sys.argv[3]
W = os.path.join(tempfile.mkdtemp(prefix="tidemark-state-flips-"), "w")
def tm(args): return subprocess.run([B]+args, cwd=W, capture_output=True, text=True)
def rows(db, t):
    c=sqlite3.connect(db); r=list(c.execute(f"SELECT * FROM {t} ORDER BY 1")); c.close(); return r
problems=[]; stats={}
for trial in range(N):
    shutil.rmtree(W, ignore_errors=True); os.makedirs(W)
    c=sqlite3.connect(W+"/src.db", isolation_level=None); c.execute("PRAGMA journal_mode=" + os.environ.get("SWEEP_JOURNAL", "WAL"))
    c.execute("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT)"); c.execute("CREATE TABLE b(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
    c.execute("BEGIN")
    for i in range(3000): c.execute("INSERT INTO a VALUES (?,?)",(i,"v%d"%i))
    for i in range(500): c.execute("INSERT INTO b VALUES (?,?)",("k%d"%i,os.urandom(20)))
    c.execute("COMMIT")
    assert tm(["track","--source","sqlite:src.db"]).returncode==0
    for r in range(random.randint(1,4)):
        if r: 
            c.execute("BEGIN")
            for i in random.sample(range(3500),50): c.execute("INSERT OR REPLACE INTO a VALUES (?,?)",(i,"r%d-%d"%(r,i)))
            for i in random.sample(range(3000),20): c.execute("DELETE FROM a WHERE id=?",(i,))
            c.execute("COMMIT")
        x=tm(["backup","--source","sqlite:src.db","--to","bk","--format",FMT]); assert x.returncode==0, x.stderr
    files=[f for f in glob.glob(W+"/bk/.tidemark/**",recursive=True)+glob.glob(W+"/bk/.tidemark-state/*")+glob.glob(W+"/bk/.tidemark-head")+glob.glob(W+"/bk/.tidemark-*") if os.path.isfile(f) and os.path.getsize(f)>0 and "lock" not in f]
    if not files: continue
    f=random.choice(files); data=bytearray(open(f,"rb").read()); pos=random.randrange(len(data)); data[pos]^=1<<random.randrange(8); open(f,"wb").write(data)
    # more changes, then the next backup
    c.execute("BEGIN")
    for i in random.sample(range(3500),60): c.execute("INSERT OR REPLACE INTO a VALUES (?,?)",(i,"z%d"%i))
    for i in random.sample(range(3000),30): c.execute("DELETE FROM a WHERE id=?",(i,))
    for i in random.sample(range(500),10): c.execute("DELETE FROM b WHERE k=?",("k%d"%i,))
    c.execute("COMMIT"); c.close()
    x=tm(["backup","--source","sqlite:src.db","--to","bk","--format",FMT])
    kind="full" if "Backup (full)" in x.stdout else ("incr" if x.returncode==0 else "failed")
    stats[kind]=stats.get(kind,0)+1
    tag=(trial, os.path.basename(f), pos)
    if x.returncode!=0:
        problems.append((tag,"backup",x.stderr[-200:])); continue
    v=tm(["verify","bk"])
    if v.returncode!=0: problems.append((tag,"verify-after",v.stderr[-200:])); continue
    rr=tm(["restore","--from","bk","--to","sqlite:r.db"])
    if rr.returncode!=0: problems.append((tag,"restore",rr.stderr[-200:])); continue
    for t in ["a","b"]:
        if rows(W+"/src.db",t)!=rows(W+"/r.db",t): problems.append((tag,"content "+t,kind))
print(stats)
print("PROBLEMS",len(problems))
for p in problems: print(p)
shutil.rmtree(os.path.dirname(W), ignore_errors=True)
sys.exit(1 if problems else 0)
