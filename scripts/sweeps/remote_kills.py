#!/usr/bin/env python3
"""Kills a tidemark command on an archive chain in an S3 bucket (moto's server on loopback) at
the N-th call of a set of system calls (strace's fault injection; the HTTP requests go out
through `sendto`/`write`), for N = 1, 2, ... until a run completes. The chain is a tracked
SQLite database's (five backups, the third of them full; each state recorded with the `sqlite3`
shell's `.dump`), copied object by object for each case. After each kill:

- verify calls the chain intact;
- every point `list --json` shows restores with `--at`, equal to the database at that point,
  and nothing a complete run keeps is gone (prune, compact);
- the command run again completes; a change and the next backup (an incremental), verify and
  a restore equal to the source follow.

Prints each problem and a total. See docs/RELIABILITY.md.

usage: [SWEEP_BLOB_BYTES=N] remote_kills.py backup|full|prune|compact SYSCALLS [MAX_N]
  e.g. remote_kills.py backup sendto,write 200
needs: strace, the sqlite3 shell, python3 with moto[server] (scripts/setup.sh installs it),
`cargo build --release -p tidemark-cli` (or TIDEMARK_BIN)."""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from common import (BIN, run, sqlite_rounds, table_dump, chain_points, check_killed_chain,
                    kill_sweep)

cmd, sc = sys.argv[1], sys.argv[2]
maxn = int(sys.argv[3]) if len(sys.argv) > 3 else 10**6
W = tempfile.mkdtemp(prefix=f"gs-remote-{cmd}-", dir=os.environ.get("TMPDIR", "/tmp"))

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.close()
moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
ENDPOINT = f"http://127.0.0.1:{port}"
os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                  AWS_REGION="us-east-1", AWS_ENDPOINT=ENDPOINT, AWS_ALLOW_HTTP="true")


def ok(r, what):
    assert r.returncode == 0, (what, r.returncode, r.stderr)
    return r


def backup(src, url, *extra):
    return run([BIN, "backup", "--source", f"sqlite:{src}", "--to", url, "--format", "archive",
                "--cache", os.path.join(os.path.dirname(src), "cache"), *extra])


def command(src, url):
    return {
        "backup": [BIN, "backup", "--source", f"sqlite:{src}", "--to", url, "--format", "archive",
                   "--cache", os.path.join(os.path.dirname(src), "cache")],
        "full": [BIN, "backup", "--source", f"sqlite:{src}", "--to", url, "--format", "archive",
                 "--cache", os.path.join(os.path.dirname(src), "cache"), "--full"],
        "prune": [BIN, "prune", url, "--keep-last", "2"],
        "compact": [BIN, "compact", url, "--fanout", "2"],
    }[cmd]


AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host, Signature=0"}


def http(method, path, data=None):
    """A request to the server with a dummy SigV4 header (moto checks none, but refuses some
    requests without one); the response's body."""
    headers = dict(AUTH, **{"Content-Type": "application/octet-stream"})
    req = urllib.request.Request(ENDPOINT + path, method=method, data=data, headers=headers)
    return urllib.request.urlopen(req).read()


for _ in range(150):
    try:
        http("PUT", "/sweep", b"")
        break
    except Exception:
        time.sleep(0.2)


def objects(prefix):
    """Every object key under `prefix` in the bucket, with its bytes."""
    import xml.etree.ElementTree as ET
    out = {}
    body = http("GET", f"/sweep?list-type=2&prefix={prefix}/")
    ns = {"s": "http://s3.amazonaws.com/doc/2006-03-01/"}
    for c in ET.fromstring(body).findall("s:Contents", ns):
        key = c.find("s:Key", ns).text
        out[key] = http("GET", f"/sweep/{key}")
    return out


def copy_prefix(src_prefix, dst_prefix):
    for key, data in objects(src_prefix).items():
        new = dst_prefix + key[len(src_prefix):]
        http("PUT", f"/sweep/{new}", data)


try:
    # The template: a tracked database (and its key-state cache) and its chain under `tpl`.
    tpl = os.path.join(W, "tpl")
    os.makedirs(tpl)
    src = os.path.join(tpl, "src.db")
    sqlite_rounds(src, 0)
    ok(run([BIN, "track", "--source", f"sqlite:{src}"]), "track")
    states = {}
    for rnd in range(1, 6):
        sqlite_rounds(src, rnd)
        ok(backup(src, "s3://sweep/tpl", *(["--full"] if rnd == 3 else [])), f"backup {rnd}")
        at, err = chain_points("s3://sweep/tpl")
        assert err is None, err
        states[at[-1]] = table_dump(src)
    sqlite_rounds(src, 6)  # what the killed backup backs up
    after = table_dump(src)

    done = os.path.join(W, "done")
    shutil.copytree(tpl, done)
    copy_prefix("tpl", "done")
    ok(run(command(os.path.join(done, "src.db"), "s3://sweep/done")), "complete run")
    kept, err = chain_points("s3://sweep/done")
    assert err is None, err
    if cmd in ("backup", "full"):
        kept = kept[:-1]  # the new backup's point may be missing after a kill
    print(f"{cmd}: {len(states)} points before, {len(kept)} kept by a complete run", flush=True)

    def start_case(n):
        case = os.path.join(W, f"case{n}")
        shutil.rmtree(os.path.join(W, f"case{n - 1}"), ignore_errors=True)
        shutil.copytree(tpl, case)
        copy_prefix("tpl", f"case{n}")
        return case

    def url_of(case):
        return f"s3://sweep/{os.path.basename(case)}"

    def check(case):
        csrc, url = os.path.join(case, "src.db"), url_of(case)
        return check_killed_chain(url, case, kept, states, lambda: run(command(csrc, url)),
                                  lambda: backup(csrc, url), csrc, other=after)

    kill_sweep(cmd, sc, maxn, start_case,
               lambda case: command(os.path.join(case, "src.db"), url_of(case)), check)
finally:
    moto.kill()
    shutil.rmtree(W, ignore_errors=True)
