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


def sqlite_rounds(path, rnd):
    """A SQLite database's table t, written by the sqlite3 shell: round 0 creates 300 rows (with
    a random blob of `blob` bytes each, from $SWEEP_BLOB_BYTES); each later round updates,
    deletes and inserts some."""
    blob = int(os.environ.get("SWEEP_BLOB_BYTES", "0"))
    if rnd == 0:
        sql = ("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); "
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
               f"INSERT INTO t SELECT i, 'v' || i, randomblob({blob}) FROM n;")
    else:
        sql = (f"UPDATE t SET v = 'r{rnd}' WHERE id % 5 = {rnd % 5}; "
               f"DELETE FROM t WHERE id % 29 = {rnd % 29}; "
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) "
               f"INSERT INTO t(v) SELECT 'n{rnd}-' || i FROM n;")
    r = run(["sqlite3", path, sql])
    assert r.returncode == 0, (path, r.stderr)


def table_dump(path):
    """Table t as the sqlite3 shell dumps it (a tracked source also holds tidemark's change log
    and triggers, which a restore leaves out); None if there is no database."""
    if not os.path.exists(path):
        return None
    r = run(["sqlite3", path, ".dump t"])
    assert r.returncode == 0, (path, r.stderr)
    return r.stdout


def chain_points(dest):
    """The checkpoints (`to`) of the archives `list --json` shows, or the error."""
    import json
    r = run([BIN, "list", dest, "--json"])
    if r.returncode != 0:
        return None, r.stderr.strip()[-300:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return sorted({row["to"] for row in rows if row.get("type") == "archive"}), None


def check_killed_chain(dest, case, kept, states, again, backup, src, other=None):
    """What must hold of the chain at `dest` after a command on it was killed: verify intact;
    every listed point restores (into `case`) to its dump in `states` (`other` for a point not
    there); every point in `kept` is listed; `again` (the command run again) and, after a change
    to the SQLite source `src`, `backup` succeed; verify intact; the newest restore equals the
    source. Returns what went wrong."""
    why = []
    v = run([BIN, "verify", dest])
    if v.returncode != 0:
        why.append(f"verify after kill: exit {v.returncode}: {v.stderr.strip()[-300:]}")
    at, err = chain_points(dest)
    if err:
        why.append(f"list after kill: {err}")
    else:
        lost = [p for p in kept if p not in at]
        if lost:
            why.append(f"points a complete run keeps are gone: {lost}")
        for p in at:
            t = os.path.join(case, f"at-{p}.db")
            rr = run([BIN, "restore", "--from", dest, "--to", f"sqlite:{t}", "--at", str(p)])
            if rr.returncode != 0:
                why.append(f"restore --at {p}: exit {rr.returncode}: {rr.stderr.strip()[-200:]}")
            elif table_dump(t) != states.get(p, other):
                why.append(f"restore --at {p} differs from the database at that point")
    r = again()
    if r.returncode != 0:
        why.append(f"the command again: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    sqlite_rounds(src, 10)
    b = backup()
    if b.returncode != 0 or "incremental" not in b.stdout:
        why.append(f"next backup: exit {b.returncode}: {(b.stdout + b.stderr).strip()[-300:]}")
    v2 = run([BIN, "verify", dest])
    if v2.returncode != 0:
        why.append(f"verify after the next backup: exit {v2.returncode}: {v2.stderr.strip()[-300:]}")
    t = os.path.join(case, "newest.db")
    rr = run([BIN, "restore", "--from", dest, "--to", f"sqlite:{t}"])
    if rr.returncode != 0:
        why.append(f"restore: exit {rr.returncode}: {rr.stderr.strip()[-300:]}")
    elif table_dump(t) != table_dump(src):
        why.append("restore differs from the source")
    return why


def kill_sweep(name, syscalls, maxn, start_case, command, check):
    """Runs `command(case)` killed (strace's fault injection) at the N-th call of `syscalls`,
    for N = 1, 2, ... up to `maxn` or until a run completes, each on a fresh case from
    `start_case(n)`; `check(case)` says what went wrong after the kill. Prints each problem and
    a total; returns the number of problems."""
    problems = 0
    total = 0
    for n in range(1, maxn + 1):
        case = start_case(n)
        r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e",
                 f"inject={syscalls}:signal=KILL:when={n}", *command(case)])
        if r.returncode == 0:
            print(f"{name}: completed at n={n}: {n - 1} kill points", flush=True)
            break
        total += 1
        why = []
        if r.returncode not in (137, -9) and "Killed" not in r.stderr:
            why.append(f"{name} exit {r.returncode}: {r.stderr.strip()[-300:]}")
        why += check(case)
        if why:
            problems += 1
            print(f"PROBLEM n={n}: " + " | ".join(why), flush=True)
    print(f"{name} {syscalls}: {total} kills, {problems} problems", flush=True)
    return problems


# An age X25519 identity in pure Python (RFC 7748's ladder, bech32 as age writes it), so that
# the sweeps of encrypted chains need no age binary.
_P = 2**255 - 19
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _x25519(k, u):
    """RFC 7748's X25519(k, u) on 32-byte little-endian strings."""
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    k = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little")
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb, da, cb = a * a, b * b, d * a, c * b
        e = aa - bb
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + 121665 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def _bech32(hrp, data):
    """`data` in bech32 under `hrp` (BIP 173), as age encodes its keys."""
    acc, bits, words = 0, 0, []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            words.append((acc >> bits) & 31)
    if bits:
        words.append((acc << (5 - bits)) & 31)
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + words + [0] * 6:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    chk ^= 1
    return hrp + "1" + "".join(_BECH32[w] for w in words + [(chk >> 5 * (5 - i)) & 31 for i in range(6)])


def age_identity(path):
    """Writes a new age identity file (AGE-SECRET-KEY-1…) at `path`; returns its recipient."""
    secret = os.urandom(32)
    public = _x25519(secret, (9).to_bytes(32, "little"))
    with open(path, "w") as f:
        f.write(_bech32("age-secret-key-", secret).upper() + "\n")
    return _bech32("age", public)
