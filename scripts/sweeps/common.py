"""What the kill sweeps share: where the binaries are, and each store's independent client
(plain sled through backend-sled's `plain_sled` example, rocksdict's RocksDB, the sqlite3
shell) to write a round of changes and to read a database back."""
import os
import subprocess

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tidemark-target"))
BIN = os.environ.get("TIDEMARK_BIN", os.path.join(TARGET, "release", "tidemark"))
SLED = os.path.join(TARGET, "release", "examples", "plain_sled")
PY = os.environ.get("TIDEMARK_PYTHON", os.path.expanduser("~/.cache/tidemark-venv/bin/python"))
ROCKSAPP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                        "tidemark-cli", "tests", "support", "rocksapp.py")


def run(args):
    return subprocess.run(args, capture_output=True, text=True)


def write(kind, path, rnd):
    """Round 0 creates the database's records; each later round changes some of them."""
    if kind == "sled":
        r = run([SLED, "write", path, str(rnd)])
    elif kind == "rocksdb":
        r = run([PY, ROCKSAPP, "write", path, str(rnd * 100), "300", "--keep-wal"])
    elif rnd == 0:
        r = run(["sqlite3", path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); "
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                 "INSERT INTO t SELECT i, 'v' || i FROM n;"])
    else:
        r = run(["sqlite3", path, f"UPDATE t SET v = 'r{rnd}' WHERE id % 3 = {rnd % 3}; "
                 f"DELETE FROM t WHERE id % 7 = {rnd % 7};"])
    assert r.returncode == 0, (path, r.stderr)


def dump(kind, path):
    """The database's content as its own client reads it; None if there is none."""
    if not os.path.exists(path):
        return None
    if kind == "sled":
        r = run([SLED, "dump", path])
    elif kind == "rocksdb":
        r = run([PY, ROCKSAPP, "dump", path])
    else:
        r = run(["sqlite3", path, ".dump"])
    assert r.returncode == 0, (path, r.stderr)
    return r.stdout


def live_kill_trials(cwd, source, fmt, trials, pause, restore_to, check,
                     no_backup_yet=("holds no tidemark backup",)):
    """Starts `tidemark backup --live` of `source` into `cwd/bk` (format `fmt`, 0.05 s intervals)
    `trials` times, each killed with SIGKILL after a random `pause` (a (low, high) range in
    seconds). After each kill, verify must call the backup intact (a folder may be
    "interrupted", repaired by the next run; before the first archive there is no backup yet,
    which verify says in one of the `no_backup_yet` words);
    an intact one is restored to `restore_to(trial)` (a (store URL, path) pair) and
    `check(path)` says whether it is one consistent state (a (good, detail) pair). Prints a line
    per trial; returns the problems found."""
    import random
    import shutil
    import signal
    import time
    problems = []
    for t in range(trials):
        p = subprocess.Popen([BIN, "backup", "--source", source, "--to", "bk", "--format", fmt,
                              "--live", "--interval", "0.05"], cwd=cwd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(*pause))
        p.send_signal(signal.SIGKILL)
        p.wait()
        v = subprocess.run([BIN, "verify", "bk"], cwd=cwd, capture_output=True, text=True)
        if v.returncode != 0:
            expected = (fmt == "folder" and v.returncode == 3 and "interrupted" in v.stderr) \
                or any(words in v.stderr for words in no_backup_yet)
            if not expected:
                problems.append((t, "verify", v.returncode, v.stderr[-300:]))
            print(t, v.returncode, v.stderr.strip()[:100], flush=True)
            continue
        url, path = restore_to(t)
        r = subprocess.run([BIN, "restore", "--from", "bk", "--to", url], cwd=cwd,
                           capture_output=True, text=True)
        if r.returncode != 0:
            problems.append((t, "restore", r.returncode, r.stderr[-300:]))
            continue
        good, detail = check(path)
        if not good:
            problems.append((t, "content", detail))
        print(t, v.stdout.strip()[:80], detail, flush=True)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return problems
