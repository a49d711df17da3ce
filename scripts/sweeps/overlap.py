"""Overlapping commands on one destination: two of backup, backup --full, prune, compact, verify,
list and restore --force started together (the second after 0-300 ms) over a SQLite store of
200,000 records (tidemark-bench generate) that changes 2% before each pair. Each command must
succeed or be refused with the lock's message; afterwards a backup, verify and a restore must
give the source's rows exactly (read with Python's sqlite3), with no temporary file left.

    python3 scripts/sweeps/overlap.py archive|folder|s3 SEED TRIALS [encrypted]

`encrypted` (archive or s3): the chain is sealed to an age recipient from its first full, and
every command gets the identity (the key state lives in a cache inside the work directory).

`s3`: archives in a bucket of an S3-compatible server at $SWEEP_S3_ENDPOINT (for example
moto: `python3 -m moto.server -p 5077` and `SWEEP_S3_ENDPOINT=http://127.0.0.1:5077`); the
bucket `overlap` is created, a new prefix used per run.
"""
import subprocess, random, time, os, sys, shutil, glob, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as B, TARGET, age_identity
ENCRYPTED = "encrypted" in sys.argv[4:]
BENCH = os.path.join(TARGET, "release", "tidemark-bench")
FMT = sys.argv[1]
W = os.path.join(tempfile.mkdtemp(prefix="tidemark-overlap-"), "w")
DEST = "bk"
if FMT == "s3":
    import urllib.request
    ENDPOINT = os.environ["SWEEP_S3_ENDPOINT"]
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_REGION="us-east-1", AWS_ENDPOINT=ENDPOINT, AWS_ALLOW_HTTP="true")
    try:
        urllib.request.urlopen(urllib.request.Request(ENDPOINT + "/overlap", method="PUT", data=b""))
    except Exception:
        pass  # there already
    DEST = "s3://overlap/%d-%s" % (os.getpid(), sys.argv[2])
    FMT = "archive"
ENV = dict(os.environ, XDG_CACHE_HOME=os.path.join(os.path.dirname(W), "cache"))
IDENTITY = os.path.join(os.path.dirname(W), "id.txt")
KEY = ["--encrypt-identity", IDENTITY] if ENCRYPTED else []
def run(args, **kw):
    return subprocess.run([B]+args+KEY, cwd=W, capture_output=True, text=True, env=ENV, **kw)
def start(args):
    return subprocess.Popen([B]+args+KEY, cwd=W, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
def dump(db):
    return subprocess.run(["sqlite3", db, ".dump"], capture_output=True, text=True).stdout
def modify(r):
    subprocess.run([BENCH,"modify","--kind","sqlite","--path",W+"/src.db","--records","200000","--value-bytes","100","--round",str(r),"--percent","2"],capture_output=True,check=True)
CMDS={
 "backup": ["backup","--source","sqlite:src.db","--to",DEST,"--format",FMT],
 "full": ["backup","--source","sqlite:src.db","--to",DEST,"--format",FMT,"--full"],
 "prune": ["prune",DEST,"--keep-last","2"],
 "compact": ["compact",DEST],
 "verify": ["verify",DEST],
 "list": ["list",DEST],
 "restore": ["restore","--from",DEST,"--to","sqlite:r.db","--force"],
}
problems=[]
random.seed(int(sys.argv[2]))
shutil.rmtree(W, ignore_errors=True); os.makedirs(W)
subprocess.run([BENCH,"generate","--kind","sqlite","--path",W+"/src.db","--records","200000","--value-bytes","100"],check=True,capture_output=True)
MAKE = ["--encrypt-recipient", age_identity(IDENTITY)] if ENCRYPTED else []
r=run(CMDS["full"] + MAKE); assert r.returncode==0, r.stderr
rnd=0
if FMT=="folder":
    del CMDS["prune"]; del CMDS["compact"]
pairs=[(a,b) for a in CMDS for b in CMDS if not (a in ("verify","list") and b in ("verify","list"))]
for trial in range(int(sys.argv[3])):
    a,b=random.choice(pairs)
    rnd+=1; modify(rnd)
    pa=start(CMDS[a]); time.sleep(random.random()*0.3); pb=start(CMDS[b])
    oa=pa.communicate(); ob=pb.communicate()
    res=[(a,pa.returncode,oa[1].strip()[-300:]),(b,pb.returncode,ob[1].strip()[-300:])]
    for name,rc,err in res:
        if rc!=0 and not any(s in err for s in ["holds the lock","held by","another tidemark","is locked","in use","busy","running"]):
            if not (name in("compact",) and "nothing to compact" in err):
                problems.append((trial,a,b,name,rc,err))
    # settle: a final backup, then verify and restore must match the source
    r=run(CMDS["backup"])
    if r.returncode!=0: problems.append((trial,a,b,"settle-backup",r.returncode,r.stderr[-300:])); continue
    v=run(CMDS["verify"])
    if v.returncode!=0: problems.append((trial,a,b,"settle-verify",v.returncode,v.stderr[-300:])); continue
    if os.path.exists(W+"/chk.db"): os.remove(W+"/chk.db")
    rr=run(["restore","--from",DEST,"--to","sqlite:chk.db"])
    if rr.returncode!=0: problems.append((trial,a,b,"settle-restore",rr.returncode,rr.stderr[-300:])); continue
    if dump(W+"/chk.db").replace("CREATE TABLE IF NOT EXISTS","CREATE TABLE")!=dump(W+"/src.db").replace("CREATE TABLE IF NOT EXISTS","CREATE TABLE"):
        # compare only user tables
        q="SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE '\\_tidemark%' ESCAPE '\\' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        import sqlite3
        s=sqlite3.connect(W+"/src.db"); c=sqlite3.connect(W+"/chk.db")
        ts=[x[0] for x in s.execute(q)]
        diff=[t for t in ts if list(s.execute(f'SELECT * FROM "{t}" ORDER BY 1'))!=list(c.execute(f'SELECT * FROM "{t}" ORDER BY 1'))]
        s.close(); c.close()
        if diff: problems.append((trial,a,b,"settle-content",0,str(diff)))
    tmps=[p for p in glob.glob(W+"/bk/**/*.tmp",recursive=True)+glob.glob(W+"/bk/.*.tmp")]
    if tmps: problems.append((trial,a,b,"tmp-left",0,str(tmps)))
    print(trial,a,b,[(n,rc,err[-120:]) if rc else (n,rc) for n,rc,err in res], flush=True)
print("PROBLEMS", len(problems))
for p in problems: print(p)
shutil.rmtree(os.path.dirname(W), ignore_errors=True)
sys.exit(1 if problems else 0)
