"""Live backups killed (SIGKILL) at random moments while a writer (Python's sqlite3) commits
transactions that insert a row, sometimes delete an older one, and set a counter to the last
row's id. After each kill, verify must call the backup intact (a folder may be "interrupted",
repaired by the next run), and a restore must be one consistent transaction's state: the
counter n, and exactly the rows 1..n that the writer had not deleted.

    python3 scripts/sweeps/live_kills.py archive|folder TRIALS SEED

The source is in WAL mode; SWEEP_JOURNAL=DELETE puts it in rollback-journal mode (full
backups read it in steps, which its change log sets right).
"""
import subprocess, random, time, os, sys, shutil, sqlite3, threading, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN as B, live_kill_trials
FMT = sys.argv[1]; N = int(sys.argv[2]); random.seed(int(sys.argv[3]))
W = os.path.join(tempfile.mkdtemp(prefix="tidemark-live-kills-"), "w"); os.makedirs(W)
def tm(args): return subprocess.run([B]+args, cwd=W, capture_output=True, text=True)
db=sqlite3.connect(W+"/src.db", isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=" + os.environ.get("SWEEP_JOURNAL", "WAL"))
db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, v TEXT)")
db.execute("CREATE TABLE ctr(k INTEGER PRIMARY KEY, n INTEGER)")
db.execute("INSERT INTO ctr VALUES (1, 0)")
r=tm(["track","--source","sqlite:src.db"]); assert r.returncode==0, r.stderr
stop=False; nxt=[1]
def writer():
    c=sqlite3.connect(W+"/src.db", isolation_level=None, timeout=30)
    while not stop:
        i=nxt[0]
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO log VALUES (?, ?)", (i, "x"*random.randint(10,3000)))
        if i % 7 == 0: c.execute("DELETE FROM log WHERE id = ?", (i-3,))
        c.execute("UPDATE ctr SET n = ? WHERE k = 1", (i,))
        c.execute("COMMIT")
        nxt[0]=i+1
        time.sleep(0.001)
t=threading.Thread(target=writer); t.start()
def check(path):
    c=sqlite3.connect(path)
    n=c.execute("SELECT n FROM ctr WHERE k=1").fetchone()[0]
    ids=[x[0] for x in c.execute("SELECT id FROM log ORDER BY id")]
    c.close()
    exp=[i for i in range(1,n+1) if not (i+3<=n and (i+3)%7==0)]
    return ids==exp, f"n={n} rows={len(ids)} expected={len(exp)}"
try:
    problems=live_kill_trials(W, "sqlite:src.db", FMT, N, (0.05, 1.5),
                              lambda t: ("sqlite:"+W+f"/r{t}.db", W+f"/r{t}.db"), check,
                              no_backup_yet=("holds no tidemark backup", "no such backup"))
finally:
    stop=True; t.join()
print("PROBLEMS", len(problems))
for x in problems: print(x)
shutil.rmtree(os.path.dirname(W), ignore_errors=True)
sys.exit(1 if problems else 0)
