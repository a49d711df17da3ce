//! Helpers shared by the CLI's end-to-end tests (each test binary uses a subset).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

#[cfg(all(feature = "rocksdb", feature = "sled", feature = "sqlite"))]
pub mod kv;

/// The `tidemark` binary under test: this build's, or `TIDEMARK_BIN` (to run the suite
/// against another build, e.g. to show that a new test fails on the code before a fix).
pub fn bin() -> std::path::PathBuf {
    std::env::var_os("TIDEMARK_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tidemark").into())
}

/// `tidemark backup` of the SQLite store `src.db` into the archive chain `ar` (relative to the
/// directory it runs in): the arguments most archive tests start from.
pub const ARCHIVE_BACKUP: [&str; 7] = [
    "backup",
    "--source",
    "sqlite:src.db",
    "--to",
    "ar",
    "--format",
    "archive",
];

/// `tidemark` in `cwd` with a cache of its own under `cwd/cache` (where encrypted and remote
/// chains keep their key state), not the user's.
pub fn in_own_cache(cwd: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd).env("XDG_CACHE_HOME", cwd.join("cache"));
    c
}

/// [`in_own_cache`], with the environment that points its S3 client at this process's moto
/// server, as a user would configure it (`conformance_tests::s3::env`).
pub fn against_moto(cwd: &Path) -> Command {
    let mut c = in_own_cache(cwd);
    c.envs(conformance_tests::s3::env());
    c
}

/// Runs `tidemark` in `cwd`.
pub fn tidemark(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Runs `tidemark`, which must succeed; returns its stdout.
pub fn ok(args: &[&str], cwd: &Path) -> String {
    succeeds(Command::new(bin()).current_dir(cwd), args)
}

/// The archives (`*.zip`) in `dir`, in name order (so in chain order).
pub fn archive_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    v.sort();
    v
}

/// The names of the archives in `dir`, in name order.
pub fn archive_names(dir: &Path) -> Vec<String> {
    archive_paths(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A command's stdout followed by its stderr (where tidemark says why a run is full or
/// diff-based, and its warnings), as one text to search.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `tidemark`, which must fail; returns its stderr.
pub fn fails(args: &[&str], cwd: &Path) -> String {
    refused(Command::new(bin()).current_dir(cwd), args)
}

/// Runs `cmd` (`tidemark`, set up by the caller: directory, environment) with `args`, which
/// must succeed; returns its stdout.
pub fn succeeds(cmd: &mut Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tidemark {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `cmd` with `args`, which must fail; returns its stderr.
pub fn refused(cmd: &mut Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "tidemark {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends `signal` (`kill`'s spelling: `-INT`, `-TERM`) to a running `tidemark` and collects it.
pub fn signal(child: std::process::Child, signal: &str) -> Output {
    assert!(Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    child.wait_with_output().unwrap()
}

/// Stops a running `tidemark` with SIGTERM, as a service manager would, and collects it.
pub fn sigterm(child: std::process::Child) -> Output {
    signal(child, "-TERM")
}

/// [`sigterm`], which must end the process cleanly (exit status 0).
pub fn stop_cleanly(child: std::process::Child) -> Output {
    let out = sigterm(child);
    assert!(
        out.status.success(),
        "a SIGTERM stop is clean: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python script (`python3 -c`, its `sqlite3` module: an independent SQLite client) in
/// `dir`, which must succeed: a writer killed with `os._exit` leaves a database as a crashed
/// application would.
pub fn python_script(dir: &Path, script: &str) {
    let st = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "python3 -c {script}");
}

/// Runs an SQL script with the `sqlite3` shell (an independent client), with a busy timeout.
pub fn sql(db: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!(".bail on\n.timeout 20000\n{script}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `.dump` without tidemark's own tracking objects (its change log is an AUTOINCREMENT table,
/// so it also accounts for a `DELETE FROM sqlite_sequence;` when no user table has a row there).
pub fn dump(db: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("_tidemark_")).collect();
    let user_sequences = lines
        .iter()
        .any(|l| l.starts_with("INSERT INTO sqlite_sequence"));
    lines
        .into_iter()
        .filter(|l| user_sequences || *l != "DELETE FROM sqlite_sequence;")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts two dumps are identical, showing only the first difference.
pub fn assert_same_dump(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{what}: dumps differ at line {i} ({} vs {} lines):\n  restored: {:?}\n  source:   {:?}",
        g.len(),
        w.len(),
        g.get(i),
        w.get(i)
    );
}

/// How many entries of `dir` have names ending in `suffix` (0 if `dir` is not there yet).
pub fn files_ending(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    })
}

/// Every file under `dir` (relative path → contents), to prove a run changed none and added
/// none.
pub fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that `dir` holds exactly the files of `before`, byte for byte (names the first
/// difference).
pub fn assert_unchanged(
    dir: &Path,
    before: &std::collections::BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let after = snapshot_files(dir);
    let names =
        |m: &std::collections::BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&after),
        names(before),
        "{what}: files added or removed"
    );
    for (name, bytes) in before {
        assert!(after[name] == *bytes, "{what}: {name} changed");
    }
}

/// The Python interpreter with rocksdict (an independent RocksDB application), as
/// `scripts/setup.sh` installs it.
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("TIDEMARK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var("HOME").unwrap()).join(".cache/tidemark-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs rocksdict in a venv)",
        p.display()
    );
    p
}

/// Runs the rocksdict application (`tests/support/rocksapp.py`); returns its stdout.
pub fn rocksapp(args: &[&str], cwd: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rocksapp.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rocksapp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tidemark backup --source SOURCE --to DEST --format FORMAT`, which must succeed;
/// returns its stdout.
pub fn backup(cwd: &Path, source: &str, dest: &str, format: &str) -> String {
    ok(
        &[
            "backup", "--source", source, "--to", dest, "--format", format,
        ],
        cwd,
    )
}

/// Plain `sled::open`, as an application opens its database, waiting for the lock that sled
/// releases a moment after a handle (this test's own, or a tidemark process that just exited)
/// let go of it.
pub fn open_sled(path: &Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if start.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("sled {}: {e}", path.display()),
        }
    }
}

/// Waits (up to 30 s, polling every 5 ms) until `cond` holds; fails the test naming `what`
/// otherwise.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A SQLite source of `rows` incompressible rows of 30 KB (1,500 rows: about 45 MB), backed up
/// to `bk` as an archive without compression: a restore of it takes long enough for a test to
/// act while it runs.
pub fn big_backup(d: &Path, rows: u32) {
    sql(
        &d.join("src.db"),
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO t SELECT i, randomblob(30000) FROM n;"
        ),
    );
    ok(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "bk",
            "--format",
            "archive",
            "--compression",
            "none",
        ],
        d,
    );
}

/// The temporary stores of restores running (or left) in `d`.
pub fn restores_in_progress(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tidemark-restore"))
        .collect()
}

/// Starts `tidemark restore --from bk --to TARGET` in `d`, its stderr piped.
pub fn start_restore(d: &Path, target: &str) -> std::process::Child {
    Command::new(bin())
        .args(["restore", "--from", "bk", "--to", target])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts two restores of `bk` to `target` at once, and checks that one puts its store there
/// and the other is refused because the target is no longer empty; then that no temporary
/// store is left.
pub fn one_of_two_restores_wins(d: &Path, target: &str) {
    let runs = [start_restore(d, target), start_restore(d, target)];
    let outs: Vec<_> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let errs: Vec<_> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    let succeeded = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(succeeded, 1, "{errs:?}");
    assert!(
        errs.iter().any(|e| e.contains("is not empty (use --force")),
        "{errs:?}"
    );
    assert!(restores_in_progress(d).is_empty());
}

/// The compression methods (`Deflated`, `Zstd`, `Stored`) of a zip's entries, read through the
/// zip crate.
pub fn entry_methods(
    zip: impl std::io::Read + std::io::Seek,
) -> std::collections::BTreeSet<String> {
    let mut zip = zip::ZipArchive::new(zip).unwrap();
    (0..zip.len())
        .map(|i| format!("{:?}", zip.by_index(i).unwrap().compression()))
        .collect()
}

/// Waits (as [`wait_for`]) until the directory `dir` holds an archive (a `.zip`): a live
/// backup's first run is done.
pub fn wait_for_an_archive(dir: &Path) {
    wait_for(&format!("an archive in {}", dir.display()), || {
        std::fs::read_dir(dir).is_ok_and(|r| {
            r.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".zip"))
        })
    });
}

/// Golden fixture `name` (`tests/fixtures/<name>.tar`, or `.tar.gz`), unpacked into `d` (a
/// copy: the committed files are never written to; git keeps no empty directories, a tar does):
/// its root.
pub fn unpack_fixture(d: &Path, name: &str) -> std::path::PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let plain = fixtures.join(format!("{name}.tar"));
    let tar = if plain.exists() {
        plain
    } else {
        fixtures.join(format!("{name}.tar.gz"))
    };
    let gzipped = tar.extension().is_some_and(|e| e == "gz");
    let st = Command::new("tar")
        .arg(if gzipped { "-xzf" } else { "-xf" })
        .arg(&tar)
        .arg("-C")
        .arg(d)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tar.display());
    d.join(name)
}

/// A golden fixture's points: each file `<prefix><checkpoint>.sql` in `root` (a `sqlite3`
/// dump taken there) as (checkpoint, its text), oldest first.
pub fn dumps_at(root: &Path, prefix: &str) -> Vec<(u64, String)> {
    let mut points: Vec<(u64, String)> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let at = name
                .strip_prefix(prefix)?
                .strip_suffix(".sql")?
                .parse()
                .ok()?;
            Some((at, std::fs::read_to_string(root.join(&name)).unwrap()))
        })
        .collect();
    points.sort();
    points
}

/// Restores `from` (at checkpoint `at`, if given) into the SQLite database `target` in `root`
/// with the arguments `key` through `ok` (which runs `tidemark` there and must succeed), and
/// compares its dump with `want`, tracking objects aside.
pub fn assert_restores_as(
    ok: impl Fn(&[&str], &Path) -> String,
    root: &Path,
    (from, at): (&str, Option<u64>),
    key: &[&str],
    target: &str,
    want: &str,
) {
    let to = format!("sqlite:{target}");
    let at = at.map(|a| a.to_string());
    let mut args = vec!["restore", "--from", from, "--to", &to];
    if let Some(at) = &at {
        args.extend(["--at", at]);
    }
    args.extend(key);
    ok(&args, root);
    assert_same_dump(
        &without_tracking(&dump(&root.join(target))),
        &without_tracking(want),
        &format!("{from} at {at:?}"),
    );
}

/// A `sqlite3` dump without tidemark's tracking objects and the `sqlite_sequence` reset they
/// cause: how a golden fixture's expected state compares with a restore.
pub fn without_tracking(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("_tidemark_") && *l != "DELETE FROM sqlite_sequence;")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until nothing holds sled's lock on the database at `path` (an exclusive `flock` on
/// its `db` file): a dropped `sled::Db` lets go of it a moment later, once its flusher thread
/// stops, and a test that goes on before then finds the database held.
pub fn wait_for_sled_to_let_go(path: &Path) {
    let db = std::fs::File::open(path.join("db")).unwrap();
    wait_for(&format!("sled to let go of {}", path.display()), || {
        // Granted only while no other open file holds it; released when `db` is closed or
        // locked again.
        backup_core::flock(&db, true, false).unwrap()
    });
}

/// Asserts that `out`, a run of `args`, refused a backup a newer tidemark wrote: exit 1 (not 3:
/// it is not damage), saying that `unsupported` is not supported and naming a newer tidemark.
pub fn assert_refused_as_newer(out: &Output, args: &[&str], unsupported: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(unsupported) && err.contains("newer tidemark"),
        "{args:?}: {err}"
    );
}

/// The checkpoint an archive ends at, read through the zip crate (`unzip` has no zstd).
pub fn checkpoint_of(archive: &Path) -> u64 {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(archive).unwrap()).unwrap();
    let mut text = String::new();
    zip.by_name("tidemark/manifest.json")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["manifest"]["to"]["position"].as_u64().unwrap()
}
