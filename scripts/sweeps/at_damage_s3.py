#!/usr/bin/env python3
"""`at_damage.py` on an object store: a tracked SQLite database backed up seven times (the
fourth full) into a bucket of moto's S3 server on loopback, each state dumped with the `sqlite3`
shell by checkpoint and capture time. Each trial copies the chain's objects to a prefix of its
own, flips a bit in, truncates or deletes one or two archive or seal objects, runs verify, and
restores every point with `--at`, by checkpoint and by time. A restore must give exactly the
state asked for (exit 0) or refuse (exit 1 or 3); what verify calls intact must restore.

usage: at_damage_s3.py SEED TRIALS [compact]
needs: the sqlite3 shell, python3 with moto[server], `cargo build --release -p tidemark-cli`
with every feature (or TIDEMARK_BIN). See docs/RELIABILITY.md."""
import json, os, random, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from common import BIN as B
seed, trials = int(sys.argv[1]), int(sys.argv[2]); COMPACT = len(sys.argv) > 3
rnd = random.Random(seed)
W = tempfile.mkdtemp()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
E = f"http://127.0.0.1:{port}"
os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", AWS_ENDPOINT=E, AWS_ALLOW_HTTP="true")
H = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0", "Content-Type": "application/octet-stream"}
def http(m, p, d=None): return urllib.request.urlopen(urllib.request.Request(E + p, method=m, data=d, headers=H)).read()
for _ in range(100):
    try: http("PUT", "/bkt", b""); break
    except Exception: time.sleep(0.2)
def keys(prefix): return re.findall(r"<Key>([^<]+)</Key>", http("GET", f"/bkt?list-type=2&prefix={prefix}/").decode())
def run(a): return subprocess.run(a, capture_output=True, text=True, cwd=W)
def dump(db): return run(["sqlite3", db, ".dump t"]).stdout
problems = 0; outcomes = {}
try:
    run(["sqlite3", "s.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300) INSERT INTO t SELECT i, 'v'||i FROM n;"])
    run([B, "track", "--source", "sqlite:s.db"])
    states = {}; times = {}
    for r in range(1, 8):
        run(["sqlite3", "s.db", f"UPDATE t SET v='r{r}' WHERE id % 4 = {r % 4}; DELETE FROM t WHERE id % 31 = {r}; INSERT INTO t(v) VALUES ('n{r}');"])
        x = run([B, "backup", "--source", "sqlite:s.db", "--to", "s3://bkt/tpl", "--format", "archive"] + (["--full"] if r == 4 else [])); assert x.returncode == 0, x.stderr
        rows = [json.loads(l) for l in run([B, "list", "s3://bkt/tpl", "--json"]).stdout.splitlines()]
        last = [x for x in rows if x.get("type") == "archive"][-1]
        states[last["to"]] = dump(os.path.join(W, "s.db")); times[last["captured_at"]] = states[last["to"]]
    if COMPACT:
        x = run([B, "compact", "s3://bkt/tpl", "--fanout", "2"]); assert x.returncode == 0, x.stderr
    tpl = {k: http("GET", "/bkt/" + k) for k in keys("tpl")}
    for t in range(trials):
        pre = f"c{t}"
        for k, v in tpl.items(): http("PUT", f"/bkt/{pre}/" + k[4:], v)
        objs = [k for k in tpl if "tidemark-0" in k]
        ops = []
        for _ in range(rnd.choice([1, 1, 2])):
            k = rnd.choice(objs); what = rnd.choice(["flip", "delete", "trunc"]); ops.append((what, k[4:]))
            key = f"{pre}/" + k[4:]
            try: b = bytearray(http("GET", "/bkt/" + key))
            except Exception: continue
            if what == "flip" and b: b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8); http("PUT", "/bkt/" + key, bytes(b))
            elif what == "trunc": http("PUT", "/bkt/" + key, bytes(b[:rnd.randrange(len(b) + 1)]))
            else: http("DELETE", "/bkt/" + key)
        v = run([B, "verify", f"s3://bkt/{pre}"]).returncode
        for kind, pts in (("cp", states), ("time", times)):
            for p, want in pts.items():
                o = os.path.join(W, "o.db")
                if os.path.exists(o): os.remove(o)
                r = run([B, "restore", "--from", f"s3://bkt/{pre}", "--to", "sqlite:o.db", "--at", str(p)])
                outcomes[(kind, r.returncode)] = outcomes.get((kind, r.returncode), 0) + 1
                if r.returncode == 0 and dump(o) != want:
                    problems += 1; print("WRONG DATA", t, ops, kind, p, r.stderr[-200:])
                elif r.returncode not in (0, 1, 3):
                    problems += 1; print("EXIT", r.returncode, t, ops, kind, p, r.stderr[-300:])
                elif r.returncode == 1 and os.environ.get("SHOW1"):
                    print("EXIT1", t, ops, kind, p, r.stderr.strip()[-250:])
                elif r.returncode != 0 and v == 0:
                    problems += 1; print("verify 0 but restore refused", t, ops, kind, p, r.stderr[-200:])
    print("outcomes", outcomes, "problems", problems)
finally:
    moto.kill(); shutil.rmtree(W)
