//! Archive chains on S3, against a real S3-compatible server on loopback (moto's `moto_server`,
//! started here; `scripts/setup.sh` installs it): a full + incremental chain up, list, verify and
//! restore from the bucket, point-in-time restore, prune, damage found, uploads cut short (an
//! unsealed object, a SIGKILL mid-upload) leaving the chain valid, and a scheduled job with
//! retention; the same for RocksDB and sled sources, read back with their own libraries, also to
//! several destinations in one run (and RocksDB live to the bucket beside its application).
#![cfg(all(feature = "sqlite", feature = "remote"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{assert_same_dump, dump, sql};
use conformance_tests::s3::{bucket, http, moto, Proxy};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `tidemark` in `cwd`, configured for the moto server like a user would (environment).
fn cmd(cwd: &Path) -> Command {
    common::against_moto(cwd)
}

fn run(args: &[&str], cwd: &Path) -> Output {
    cmd(cwd).args(args).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    common::succeeds(&mut cmd(cwd), args)
}

fn fails(args: &[&str], cwd: &Path) -> String {
    common::refused(&mut cmd(cwd), args)
}

fn source(d: &Path) {
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO t SELECT i, 'v' || i, randomblob(i % 50) FROM n;",
    );
    let out = common::tidemark(&["track", "--source", "sqlite:src.db"], d);
    assert!(out.status.success());
}

fn backup(d: &Path, url: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "backup",
        "--source",
        "sqlite:src.db",
        "--to",
        url,
        "--format",
        "archive",
    ];
    args.extend_from_slice(extra);
    ok(&args, d)
}

/// `list` rows: (archive name, kind, to checkpoint).
fn list(d: &Path, url: &str) -> Vec<(String, String, String)> {
    ok(&["list", url], d)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[3].to_string())
        })
        .collect()
}

fn restore(d: &Path, url: &str, at: Option<&str>, name: &str) -> String {
    let to = format!("sqlite:{name}");
    let mut args = vec!["restore", "--from", url, "--to", &to];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    ok(&args, d);
    dump(&d.join(name))
}

/// The compression methods of the entries of the archive object at `path`, read through the
/// zip crate from a plain GET.
fn methods_of_object(path: &str) -> std::collections::BTreeSet<String> {
    let resp = conformance_tests::s3::request("GET", path, b"");
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    common::entry_methods(std::io::Cursor::new(&resp[at + 4..]))
}

#[test]
fn a_chain_round_trips_through_the_bucket() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = format!("{}/apps/shop", bucket("roundtrip"));
    let mut states = Vec::new();
    let out = backup(d, &url, &["--compression", "zstd"]);
    assert!(out.contains("Archive (full)"), "{out}");
    states.push(dump(&d.join("src.db")));
    for round in 1..=2 {
        sql(
            &d.join("src.db"),
            &format!("UPDATE t SET v = 'r{round}' WHERE id % 9 = {round}; DELETE FROM t WHERE id = {round}; INSERT INTO t VALUES (1000 + {round}, 'new', x'00');"),
        );
        let out = backup(d, &url, &["--compression", "zstd"]);
        assert!(out.contains("Archive (incremental)"), "{out}");
        states.push(dump(&d.join("src.db")));
    }
    let chain = list(d, &url);
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert_eq!(chain[0].1, "full");
    assert_eq!(chain[2].1, "incremental");
    let v = ok(&["verify", &url], d);
    assert!(v.contains("is intact"), "{v}");
    assert_same_dump(&restore(d, &url, None, "latest.db"), &states[2], "latest");
    assert_same_dump(
        &restore(d, &url, Some(&chain[1].2), "second.db"),
        &states[1],
        "at the second archive",
    );

    // Prune: a new full and an incremental; keep-last 1 removes the first segment.
    backup(d, &url, &["--compression", "zstd", "--full"]);
    sql(&d.join("src.db"), "DELETE FROM t WHERE id < 50;");
    // No codec named: the chain's own (read from its newest archive in the bucket).
    backup(d, &url, &[]);
    assert_eq!(
        methods_of_object("/roundtrip/apps/shop/tidemark-000005-incr.zip"),
        ["Zstd".to_string()].into()
    );
    let out = ok(&["prune", &url, "--keep-last", "1", "--dry-run"], d);
    assert!(out.contains("Would remove 3 of 5"), "{out}");
    assert_eq!(list(d, &url).len(), 5);
    let out = ok(&["prune", &url, "--keep-last", "1"], d);
    assert!(out.contains("Removed 3 of 5"), "{out}");
    let chain = list(d, &url);
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert!(chain[0].0.starts_with("tidemark-000004-full"), "{chain:?}");
    ok(&["verify", &url], d);
    assert_same_dump(
        &restore(d, &url, None, "after-prune.db"),
        &dump(&d.join("src.db")),
        "after prune",
    );
    // Nothing of the pruned archives is left in the bucket.
    assert_eq!(
        http("GET", "/roundtrip/apps/shop/tidemark-000001-full.zip", b""),
        404
    );
    assert_eq!(
        http("GET", "/roundtrip/apps/shop/tidemark-000001-full.json", b""),
        404
    );

    // Damage: an archive object replaced is found by verify and refused by restore.
    assert_eq!(
        http(
            "PUT",
            "/roundtrip/apps/shop/tidemark-000005-incr.zip",
            b"not a zip"
        ),
        200
    );
    let err = fails(&["verify", &url], d);
    assert!(err.contains("its seal says"), "{err}");
    let err = fails(&["restore", "--from", &url, "--to", "sqlite:no.db"], d);
    assert!(err.contains("its seal says"), "{err}");
    assert!(!d.join("no.db").exists());
}

#[test]
fn uploads_cut_short_leave_the_chain_valid() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("cutshort");
    backup(d, &url, &[]);
    let first = dump(&d.join("src.db"));

    // An archive object without its seal (a run killed between upload and seal) is not part
    // of the chain; the next run removes it.
    assert_eq!(
        http("PUT", "/cutshort/tidemark-000002-incr.zip", b"partial"),
        200
    );
    assert_eq!(list(d, &url).len(), 1);
    ok(&["verify", &url], d);
    sql(&d.join("src.db"), "INSERT INTO t VALUES (5000, 'x', NULL);");
    let out = backup(d, &url, &[]);
    assert!(out.contains("Archive (incremental)"), "{out}");
    ok(&["verify", &url], d);
    assert_same_dump(
        &restore(d, &url, None, "a.db"),
        &dump(&d.join("src.db")),
        "after",
    );
    let before_kill = dump(&d.join("src.db"));

    // SIGKILL during a large upload (30 MB of incompressible rows, 5 MiB parts), at several
    // moments: whenever it lands, the chain verifies and restores to a state it recorded. A
    // killed upload's parts stay in the bucket (nothing ran to abort them) until the next
    // writer finds its marker and aborts it.
    sql(
        &d.join("src.db"),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t SELECT 10000 + i, 'big', randomblob(100000) FROM n;",
    );
    let after = dump(&d.join("src.db"));
    let mut left_open = 0;
    for delay_ms in [150u64, 400, 900] {
        let mut child = cmd(d)
            .args([
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                &url,
                "--format",
                "archive",
                "--compression",
                "none",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        left_open += uploads_under_way("cutshort").len();
        ok(&["verify", &url], d);
        let got = restore(d, &url, None, &format!("k{delay_ms}.db"));
        assert!(
            got == before_kill || got == after || got == first,
            "killed after {delay_ms} ms: the restore matches no recorded state"
        );
    }
    assert!(left_open > 0, "no kill landed during an upload");
    // The next run carries on, aborts what the kills left, and everything is there.
    backup(d, &url, &["--compression", "none"]);
    assert_eq!(uploads_under_way("cutshort"), Vec::<String>::new());
    let keys = conformance_tests::s3::keys("cutshort");
    assert!(
        !keys.iter().any(|k| k.contains(".tidemark-uploads")),
        "{keys:?}"
    );
    ok(&["verify", &url], d);
    assert_same_dump(
        &restore(d, &url, None, "final.db"),
        &after,
        "after the kills",
    );
}

#[test]
fn a_scheduled_job_backs_up_to_the_bucket_with_retention() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = format!("{}/nightly", bucket("scheduled"));
    std::fs::write(
        d.join("jobs.toml"),
        format!(
            r#"
[[job]]
name = "shop"
source = "sqlite:src.db"
to = "{url}"
compression = "zstd"
interval = "1h"
full_every = 1
[job.retention]
keep_last = 2
"#
        ),
    )
    .unwrap();
    let mut log = String::new();
    for round in 0..4 {
        sql(
            &d.join("src.db"),
            &format!("INSERT INTO t VALUES ({}, 'job', NULL);", 7000 + round),
        );
        log.push_str(&ok(&["run", "--config", "jobs.toml", "--once"], d));
    }
    // full, incr, full, incr; keep_last 2 keeps the last full and its incremental.
    let chain = list(d, &url);
    let kinds: Vec<&str> = chain.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(kinds, ["full", "incremental"], "{chain:?}\n{log}");
    assert!(log.contains("pruned tidemark-000001"), "{log}");
    ok(&["verify", &url], d);
    assert_same_dump(
        &restore(d, &url, None, "job.db"),
        &dump(&d.join("src.db")),
        "scheduled",
    );
    // Remote folder backups (asked for: an object store alone takes archives by default) are
    // refused with a clear message.
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            &url,
            "--format",
            "folder",
        ],
        d,
    );
    assert!(err.contains("remote destinations take archives"), "{err}");
}

/// Writes an object with boto3 (an independent S3 client; moto depends on it).
fn s3_put(bucket: &str, key: &str, body: &str) {
    let port = moto();
    let script = format!(
        "import boto3, sys\n\
         s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1',\n\
                           aws_access_key_id='test', aws_secret_access_key='test')\n\
         s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=sys.argv[3].encode())\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script, bucket, key, body])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One writer per remote destination: a lock object created with a conditional put. Another
/// holder's live lock (written here straight to the server, as another machine would) refuses
/// a backup and a prune at once, naming it; an expired one (its holder died) is taken over;
/// a run leaves no lock behind; of two backups started together, never both write.
#[test]
fn one_writer_per_remote_destination() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("locks");
    let lock_path = "/locks/app/.tidemark-lock";
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let body = format!(
        r#"{{"holder":"pid 4242 on elsewhere, since 2026-12-01T00:00:00Z: tidemark backup","token":"t","expires_at":{future}}}"#
    );
    s3_put("locks", "app/.tidemark-lock", &body);
    let dest = format!("{url}/app");
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            &dest,
            "--format",
            "archive",
        ],
        d,
    );
    assert!(
        err.contains("in use by another tidemark run") && err.contains("pid 4242 on elsewhere"),
        "{err}"
    );
    let err = fails(&["prune", &dest, "--keep-last", "1"], d);
    assert!(err.contains("pid 4242 on elsewhere"), "{err}");
    let err = fails(&["list", &dest], d);
    assert!(
        err.contains("holds no tidemark backup (no archives)"),
        "the refused backup wrote nothing: {err}"
    );
    // An expired lock: its holder is gone.
    let body = r#"{"holder":"pid 1 on elsewhere, since 2020-01-01T00:00:00Z: tidemark backup","token":"t","expires_at":1}"#;
    s3_put("locks", "app/.tidemark-lock", body);
    backup(d, &dest, &[]);
    assert_eq!(http("GET", lock_path, b""), 404, "the run removed its lock");
    // Two backups at once: one writes, the other is refused (or runs after it); the chain is
    // valid either way.
    sql(&d.join("src.db"), "INSERT INTO t(v) VALUES ('more');");
    let a = cmd(d)
        .args([
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            &dest,
            "--format",
            "archive",
            "--full",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = run(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            &dest,
            "--format",
            "archive",
            "--full",
        ],
        d,
    );
    let a = a.wait_with_output().unwrap();
    for out in [&a, &b] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("in use by another tidemark run"),
            "{err}"
        );
    }
    ok(&["verify", &dest], d);
    restore(d, &dest, None, "r.db");
    assert_same_dump(
        &dump(&d.join("r.db")),
        &dump(&d.join("src.db")),
        "after concurrent runs",
    );
}

/// The README's status table claims archives, `--at`, prune, scheduled jobs and S3 for
/// RocksDB and sled too: a chain of each in the bucket (full, incremental, forced full,
/// incremental), pruned to its last segment, verified, and restored latest and at a point,
/// read back with the store's own library; and a scheduled job with retention (`run --once`)
/// into a local directory.
#[cfg(all(feature = "rocksdb", feature = "sled"))]
#[test]
fn key_value_stores_go_through_the_bucket_prune_and_scheduled_jobs() {
    use common::kv::{differences, kv_content, kv_write};
    for kind in ["rocksdb", "sled"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let app = d.join("app");
        let src = format!("{kind}:app");
        let url = format!("{}/kv", bucket(&format!("status-{kind}")));
        let backup = |extra: &[&str]| {
            let mut args = vec![
                "backup", "--source", &src, "--to", &url, "--format", "archive",
            ];
            args.extend_from_slice(extra);
            ok(&args, d)
        };
        let puts: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..200u32)
            .map(|i| {
                (
                    "items",
                    format!("k{i:03}").into_bytes(),
                    format!("{{\"i\":{i}}}").into_bytes(),
                )
            })
            .collect();
        kv_write(kind, &app, &puts, &[]);
        backup(&[]);
        let first = kv_content(kind, &app);
        kv_write(
            kind,
            &app,
            &[("items", b"k000".to_vec(), b"changed".to_vec())],
            &[("items", b"k001")],
        );
        backup(&[]);
        backup(&["--full"]);
        kv_write(
            kind,
            &app,
            &[("more", b"x".to_vec(), b"\x00\xff".to_vec())],
            &[("items", b"k002")],
        );
        backup(&[]);
        let last = kv_content(kind, &app);
        assert_ne!(first, last);

        let chain = list(d, &url);
        let kinds: Vec<&str> = chain.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(
            kinds,
            ["full", "incremental", "full", "incremental"],
            "{kind}: {chain:?}"
        );
        // A point in the first segment, before prune: by checkpoint where the store has
        // positions (RocksDB), by time where it has none (plain sled).
        let at = if kind == "rocksdb" {
            chain[0].2.clone()
        } else {
            // The exact capture time (`list` prints seconds; these backups share one).
            let first: serde_json::Value =
                serde_json::from_str(ok(&["list", &url, "--json"], d).lines().next().unwrap())
                    .unwrap();
            first["captured_at"].as_str().unwrap().to_string()
        };
        ok(
            &[
                "restore",
                "--from",
                &url,
                "--to",
                &format!("{kind}:first"),
                "--at",
                &at,
            ],
            d,
        );
        let diff = differences(&kv_content(kind, &d.join("first")), &first);
        assert!(diff.is_empty(), "{kind} at the first archive: {diff:#?}");

        let out = ok(&["prune", &url, "--keep-last", "1"], d);
        assert!(out.contains("Removed 2 of 4"), "{kind}: {out}");
        assert_eq!(list(d, &url).len(), 2);
        ok(&["verify", &url], d);
        ok(
            &["restore", "--from", &url, "--to", &format!("{kind}:latest")],
            d,
        );
        let diff = differences(&kv_content(kind, &d.join("latest")), &last);
        assert!(diff.is_empty(), "{kind} latest after prune: {diff:#?}");

        // A scheduled job of this store: five runs (full, incremental, incremental, full,
        // incremental with a full every 2 incrementals); keeping the last 2 removes the first
        // segment.
        std::fs::write(
            d.join("jobs.toml"),
            format!(
                "[[job]]\nname = \"kv\"\nsource = \"{src}\"\nto = \"local\"\ncompression = \"zstd\"\n\
                 interval = 1\nfull_every = 2\n[job.retention]\nkeep_last = 2\n"
            ),
        )
        .unwrap();
        for round in 0..5u32 {
            kv_write(
                kind,
                &app,
                &[("items", format!("r{round}").into_bytes(), b"1".to_vec())],
                &[],
            );
            ok(&["run", "--config", "jobs.toml", "--once"], d);
        }
        let left = ok(&["list", "local"], d).lines().count() - 1;
        assert_eq!(left, 2, "{kind}: retention keeps 2 archives");
        ok(&["verify", "local"], d);
        ok(
            &["restore", "--from", "local", "--to", &format!("{kind}:job")],
            d,
        );
        let diff = differences(&kv_content(kind, &d.join("job")), &kv_content(kind, &app));
        assert!(diff.is_empty(), "{kind} scheduled job: {diff:#?}");
    }
}

/// RocksDB and sled to several destinations in one run (a directory and the bucket): a full
/// backup to both, then an incremental to both (RocksDB's from its WAL, sled's diff-based), each
/// chain verified and restored, read back with the store's own library. Then RocksDB's live
/// backup to a directory and the bucket while this process, the application, holds the
/// database and writes: both chains restore to exactly the application's database.
#[cfg(all(feature = "rocksdb", feature = "sled"))]
#[test]
fn key_value_stores_go_to_several_destinations_and_rocksdb_live_to_the_bucket() {
    use common::kv::{kv_content, kv_write};
    let restores_to = |d: &Path, kind: &str, dest: &str, name: &str, want: &common::kv::Content| {
        common::kv::assert_kv_restores(ok, d, kind, dest, name, want);
    };
    for kind in ["rocksdb", "sled"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let app = d.join("app");
        let src = format!("{kind}:app");
        let url = format!("{}/kv", bucket(&format!("several-{kind}")));
        let args = [
            "backup",
            "--source",
            &src,
            "--format",
            "archive",
            "--compression",
            "zstd",
            "--to",
            "local",
            "--to",
            &url,
        ];
        let puts: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..300u32)
            .map(|i| {
                let tree = if i % 3 == 0 { "a" } else { "b" };
                let key = format!("k{i:03}").into_bytes();
                (tree, key, format!("{{\"i\":{i}}}").into_bytes())
            })
            .collect();
        kv_write(kind, &app, &puts, &[]);
        let out = ok(&args, d);
        assert_eq!(out.matches("Archive (full)").count(), 2, "{kind}: {out}");
        kv_write(
            kind,
            &app,
            &[
                ("b", b"k001".to_vec(), b"changed".to_vec()),
                ("c", b"\x00new".to_vec(), b"\xff\x00".to_vec()),
            ],
            &[("a", b"k003"), ("b", b"k002")],
        );
        let out = ok(&args, d);
        let method = if kind == "rocksdb" {
            "Backup (incremental) of"
        } else {
            "Backup (incremental, diff-based) of"
        };
        assert_eq!(out.matches(method).count(), 2, "{kind}: {out}");
        assert_eq!(
            out.matches(": 2 records written, 2 deleted").count(),
            2,
            "{kind}: each destination took the two puts and two deletions: {out}"
        );
        let want = kv_content(kind, &app);
        restores_to(d, kind, "local", "from-local", &want);
        restores_to(d, kind, &url, "from-s3", &want);
    }

    // RocksDB live to a directory and the bucket, beside the application.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let app = d.join("app");
    let url = format!("{}/live", bucket("live-rocksdb"));
    let db = rocksdb_application(&app, 200);
    let (child, rx) = live_to_both(d, "rocksdb:app", "live-local", &url);
    let mut next = 1_000u32;
    write_until_runs(&rx, 4, || {
        db.put(format!("k{next:04}"), format!("live{next}"))
            .unwrap();
        db.delete(format!("k{:04}", next % 200)).unwrap();
        db.flush_wal(true).unwrap();
        next += 1;
    });
    // The last writes, taken by the runs a SIGTERM makes.
    db.put("last", "write").unwrap();
    db.flush_wal(true).unwrap();
    common::stop_cleanly(child);
    drop(db);
    let want = kv_content("rocksdb", &app);
    assert!(want.keys().any(|(_, k)| k == b"last"));
    restores_to(d, "rocksdb", "live-local", "live-from-local", &want);
    restores_to(d, "rocksdb", &url, "live-from-s3", &want);
}

/// The database of an application that this test process plays: RocksDB at `path`, its WAL
/// files kept an hour, with `keys` keys `k0000`… written and the WAL synced.
fn rocksdb_application(path: &Path, keys: u32) -> rocksdb::DB {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_wal_ttl_seconds(3600);
    let db = rocksdb::DB::open(&opts, path).unwrap();
    for i in 0..keys {
        db.put(format!("k{i:04}"), format!("v{i}")).unwrap();
    }
    db.flush_wal(true).unwrap();
    db
}

/// `backup --live --interval 0.2 --json` of `source` into archive chains (zstd) in the directory
/// `local` and at `url` at once, started in `d`; with its stdout lines as they come.
fn live_to_both(
    d: &Path,
    source: &str,
    local: &str,
    url: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd(d)
        .args(["backup", "--source", source, "--format", "archive"])
        .args(["--to", local, "--to", url, "--compression", "zstd"])
        .args(["--live", "--interval", "0.2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    (child, rx)
}

/// The lines `child` prints on stdout, as they come (read on a thread of their own).
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Calls `write` every 40 ms until a live backup to two destinations, whose `--json` lines
/// come on `lines`, has made at least `each` runs to each of them (at most 120 s).
fn write_until_runs(
    lines: &std::sync::mpsc::Receiver<String>,
    each: usize,
    mut write: impl FnMut(),
) {
    let mut runs: std::collections::BTreeMap<String, usize> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while runs.len() < 2 || runs.values().any(|n| *n < each) {
        assert!(Instant::now() < deadline, "runs so far: {runs:?}");
        write();
        std::thread::sleep(Duration::from_millis(40));
        while let Ok(line) = lines.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "run" {
                *runs
                    .entry(v["destination"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
}

/// `--live` to S3 through a proxy that stops forwarding for 10 seconds mid-run, for SQLite and
/// for RocksDB beside its application (this process, holding the database): the live backup
/// rides out the outage, SIGTERM flushes the last changes, and the bucket's chain verifies and
/// restores to exactly the source (nothing lost, nothing twice: the chain's sequence has no gap
/// and no repeat, which verify checks).
#[test]
fn live_to_s3_survives_a_network_outage() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = format!("{}/live", bucket("live-outage"));
    let conn = rusqlite::Connection::open(d.join("src.db")).unwrap();
    let mut next = 10_000;
    live_through_an_outage(d, "sqlite:src.db", &url, || {
        conn.execute(
            "INSERT INTO t VALUES (?1, 'live', x'01')",
            rusqlite::params![next],
        )
        .unwrap();
        conn.execute("UPDATE t SET v = 'u' || ?1 WHERE id = ?1 % 400 + 1", [next])
            .unwrap();
        next += 1;
    });
    assert_same_dump(
        &restore(d, &url, None, "after-outage.db"),
        &dump(&d.join("src.db")),
        "a live backup through an outage",
    );

    let app = d.join("app");
    let url = format!("{}/live", bucket("live-outage-rocksdb"));
    let db = rocksdb_application(&app, 300);
    let mut next = 1_000u32;
    live_through_an_outage(d, "rocksdb:app", &url, || {
        db.put(format!("k{next:04}"), format!("live{next}"))
            .unwrap();
        db.delete(format!("k{:04}", next % 300)).unwrap();
        if next % 100 == 0 {
            // Now and then a flush: new SST files and WAL files while the bucket is away.
            db.flush().unwrap();
        }
        db.flush_wal(true).unwrap();
        next += 1;
    });
    drop(db);
    let want = common::kv::kv_content("rocksdb", &app);
    // About 20 writes a second for 15 seconds, the last one in the restore.
    assert!(next > 1_200, "the application wrote {} times", next - 1_000);
    let last = format!("k{:04}", next - 1).into_bytes();
    assert!(
        want.keys().any(|(_, k)| *k == last),
        "the last write is there"
    );
    common::kv::assert_kv_restores(ok, d, "rocksdb", &url, "rocksdb-after-outage", &want);
}

/// Runs `backup --live --interval 0.5` of `source` to `url` (archives, zstd) through a
/// [`Proxy`], calling `write` every 50 ms: 2 seconds, a run, 10 seconds with the proxy down,
/// 2 seconds with it up again, two more runs, 1 second; then stops it with SIGTERM, which must
/// end it cleanly, and verifies the chain in the bucket.
fn live_through_an_outage(d: &Path, source: &str, url: &str, mut write: impl FnMut()) {
    let proxy = Proxy::start(moto());
    let mut child = cmd(d)
        .env("AWS_ENDPOINT", proxy.endpoint())
        .args(["backup", "--source", source, "--to", url])
        .args(["--format", "archive", "--compression", "zstd"])
        .args(["--live", "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut seen = Vec::new();
    let wait_runs = |n: usize, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let start = seen.iter().filter(|l| l.contains(" run ")).count();
        while seen.iter().filter(|l| l.contains(" run ")).count() < start + n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("{source}: no live run came: {seen:#?}"),
            }
        }
    };
    wait_runs(1, &mut seen);
    let mut write_for = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            write();
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    write_for(2);
    wait_runs(1, &mut seen);
    proxy.down();
    write_for(10);
    proxy.up();
    write_for(2);
    // Two runs after the outage: the live backup is moving again.
    wait_runs(2, &mut seen);
    write_for(1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "{source}: still running"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    assert!(
        status.success(),
        "{source}: live backup failed: {err}\n{seen:#?}"
    );
    assert!(proxy.refused() > 0, "{source}: no request met the outage");
    let v = ok(&["verify", url], d);
    assert!(v.contains("is intact"), "{source}: {v}");
}

/// `--to` given several times: every destination gets a backup; a destination that fails (a
/// bucket that does not exist) is reported without stopping the others, and the exit status
/// says something failed.
#[test]
fn several_destinations_in_one_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let good = format!("{}/copy", bucket("several-destinations"));
    let missing = "s3://no-such-bucket-here/copy";
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = [
            "backup",
            "--source",
            "sqlite:src.db",
            "--format",
            "archive",
            "--to",
            "local",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["--to".into(), missing.into(), "--to".into(), good.clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&["--compression", "zstd"]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), d);
    assert!(!out.status.success(), "a failed destination fails the run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket-here"), "{err}");
    assert!(err.contains("1 of 3 destinations failed"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("Archive (full)").count(), 2, "{stdout}");
    // The next run: both continue their chains from the change log (the first destination's
    // run did not trim changes the second had not yet taken).
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'again' WHERE id % 5 = 0; DELETE FROM t WHERE id = 7;",
    );
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("Backup (incremental) of").count(),
        2,
        "{stdout}"
    );
    let want = dump(&d.join("src.db"));
    assert_same_dump(
        &restore(d, "local", None, "from-local.db"),
        &want,
        "local copy",
    );
    assert_same_dump(&restore(d, &good, None, "from-s3.db"), &want, "S3 copy");
    // Without --format an object store alone takes an archive, the only format it holds; beside
    // a directory (whose default is a folder) it asks for --format archive.
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'third' WHERE id % 4 = 0;",
    );
    let out = ok(&["backup", "--source", "sqlite:src.db", "--to", &good], d);
    assert!(out.contains("Archive (incremental)"), "{out}");
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "local2",
            "--to",
            &good,
        ],
        d,
    );
    assert!(err.contains("--format archive"), "{err}");
    assert!(!d.join("local2").exists());
    assert_same_dump(
        &restore(d, &good, None, "from-s3-2.db"),
        &dump(&d.join("src.db")),
        "S3 copy without --format",
    );
}

/// `list --json` and `verify --json` (and `verify -q`) say the same for a bucket and a
/// directory: one JSON object per archive (what it holds and what the backup holds), problems
/// and a summary, with a failing exit status when something is damaged.
#[test]
fn list_and_verify_speak_json_for_a_bucket_and_a_directory() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = format!("{}/json", bucket("json-output"));
    let both = [
        "backup",
        "--source",
        "sqlite:src.db",
        "--format",
        "archive",
        "--compression",
        "zstd",
        "--to",
        "dir",
        "--to",
        &url,
    ];
    ok(&both, d);
    sql(&d.join("src.db"), "UPDATE t SET v = 'x' WHERE id <= 10;");
    ok(&both, d);
    for place in ["dir", url.as_str()] {
        let lines: Vec<serde_json::Value> = ok(&["list", place, "--json"], d)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{place}: {lines:?}");
        assert!(lines
            .iter()
            .all(|l| l["schema"] == 1 && l["type"] == "archive"));
        assert_eq!(lines[0]["kind"], "full");
        assert_eq!(lines[1]["kind"], "incremental");
        assert_eq!(lines[0]["records_in_archive"], 400);
        assert_eq!(
            lines[1]["records_in_archive"], 10,
            "{place}: what the archive holds"
        );
        assert_eq!(
            lines[1]["records_in_backup"], 400,
            "{place}: what the backup holds"
        );
        assert_eq!(lines[1]["from"], lines[0]["to"]);
        let v: Vec<serde_json::Value> = ok(&["verify", place, "--json"], d)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0]["type"], "summary");
        assert_eq!(v[0]["intact"], true);
        assert_eq!(
            v[0]["records"], 410,
            "record lines checked, in both archives"
        );
        assert_eq!(v[0]["records_in_backup"], 400, "what the backup holds");
        assert_eq!(v[0]["archives"], 2);
        assert_eq!(ok(&["verify", place, "-q"], d), "", "-q prints nothing");
        let p: Vec<serde_json::Value> = ok(
            &["prune", place, "--keep-last", "1", "--dry-run", "--json"],
            d,
        )
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0]["kept"], true,
            "the full archive is needed by the newest"
        );
        assert_eq!(p[2]["type"], "summary");
        assert_eq!(p[2]["removed"], 0);
        let target = format!("sqlite:json-{}.db", place.len());
        let r: serde_json::Value = serde_json::from_str(
            ok(&["restore", "--from", place, "--to", &target, "--json"], d).trim(),
        )
        .unwrap();
        assert_eq!(r["type"], "summary");
        assert_eq!(r["records"], 400);
    }
    // Damage in the directory: problems, intact false, exit status 1.
    let archive = std::fs::read_dir(d.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-incr-"))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    let out = run(&["verify", "dir", "--json"], d);
    assert_eq!(out.status.code(), Some(3));
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(v.len() >= 2, "{v:?}");
    assert!(v[..v.len() - 1].iter().all(|l| l["type"] == "problem"));
    assert_eq!(v[v.len() - 1]["intact"], false);
}

/// `--live` with two destinations (a directory and a bucket): one follower each, both stopped
/// by one SIGTERM; each chain verifies and restores to exactly the source; the change log was
/// trimmed while they ran, never past what both held: the next plain backup to each is an
/// incremental from the change log, not a full one.
#[test]
fn live_to_several_destinations() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = format!("{}/live", bucket("live-several"));
    let (child, rx) = live_to_both(d, "sqlite:src.db", "local", &url);
    let conn = rusqlite::Connection::open(d.join("src.db")).unwrap();
    let mut next = 20_000;
    write_until_runs(&rx, 5, || {
        conn.execute(
            "INSERT INTO t VALUES (?1, 'live', x'02')",
            rusqlite::params![next],
        )
        .unwrap();
        conn.execute("UPDATE t SET v = 'w' || ?1 WHERE id = ?1 % 300 + 1", [next])
            .unwrap();
        next += 1;
    });
    common::stop_cleanly(child);
    let changes: i64 = conn
        .query_row("SELECT count(*) FROM _tidemark_changes", [], |r| r.get(0))
        .unwrap();
    let made = 2 * (next - 20_000);
    assert!(
        changes < made,
        "the change log was trimmed as both followed ({changes} of {made} changes left)"
    );
    let want = dump(&d.join("src.db"));
    for (dest, name) in [("local", "from-local.db"), (url.as_str(), "from-s3.db")] {
        let v = ok(&["verify", dest], d);
        assert!(v.contains("is intact"), "{v}");
        assert_same_dump(&restore(d, dest, None, name), &want, dest);
    }
    conn.execute("UPDATE t SET v = 'after' WHERE id = 5", [])
        .unwrap();
    // Both at once (a backup to one alone would trim what the other still needs).
    let out = backup(d, "local", &["--to", &url, "--compression", "zstd"]);
    assert_eq!(
        out.matches("Backup (incremental) of").count(),
        2,
        "the change log still held both destinations' changes: {out}"
    );
}

/// The multipart uploads under way in `bucket` (S3 `ListMultipartUploads`, straight to the
/// server): their keys.
fn uploads_under_way(bucket: &str) -> Vec<String> {
    let resp = conformance_tests::s3::request("GET", &format!("/{bucket}?uploads"), b"");
    String::from_utf8_lossy(&resp)
        .split("<Upload>")
        .skip(1)
        .filter_map(|u| u.split("<Key>").nth(1))
        .filter_map(|k| k.split("</Key>").next().map(str::to_string))
        .collect()
}

/// Ctrl-C or SIGTERM during an archive's upload aborts its multipart upload: no parts stay
/// behind in the bucket (invisible, but stored and paid for until a lifecycle rule removes
/// them), and no lock object either. The signals land from the upload's first part to past its
/// completion (each run a full archive of about 40 MB): one that lands while the upload is
/// being completed leaves it complete (the run may then finish, status 0), never open.
#[test]
fn an_interrupted_upload_leaves_no_parts_behind() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("interrupted");
    sql(
        &d.join("src.db"),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO t SELECT 10000 + i, 'big', randomblob(100000) FROM n;",
    );
    let mut interrupted = 0;
    for (signal, delay_ms) in [
        ("-INT", 0u64),
        ("-INT", 300),
        ("-TERM", 600),
        ("-TERM", 900),
        ("-INT", 1200),
        ("-TERM", 1600),
    ] {
        let child = cmd(d)
            .args([
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                &url,
                "--full",
            ])
            .args(["--format", "archive", "--compression", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_for("the upload to begin", || {
            !uploads_under_way("interrupted").is_empty()
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let out = common::signal(child, signal);
        let err = String::from_utf8_lossy(&out.stderr);
        let what = format!("{signal} after {delay_ms} ms: {err}");
        match out.status.code() {
            Some(130) => {
                assert!(err.contains("interrupted"), "{what}");
                interrupted += 1;
            }
            Some(0) => {}
            other => panic!("{other:?}: {what}"),
        }
        assert_eq!(
            uploads_under_way("interrupted"),
            Vec::<String>::new(),
            "{what}"
        );
        let keys = conformance_tests::s3::keys("interrupted");
        assert!(!keys.iter().any(|k| k.contains("lock")), "{what}: {keys:?}");
    }
    assert!(interrupted >= 2, "the early signals interrupted the upload");
    // The next run completes the backup.
    backup(d, &url, &["--compression", "none"]);
    ok(&["verify", &url], d);
}

/// A verify lists the chain, then reads each archive; a prune beside it (readers take no lock)
/// removes some in between. An object gone since the listing is not damage: the verify lists
/// the chain again. Before, 5 of 6 such verifies called the chain damaged ("Object at location
/// … not found").
#[test]
fn a_verify_beside_a_prune_of_the_bucket_is_not_fooled_by_removed_archives() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for round in 0..3u64 {
        let url = bucket(&format!("verify-beside-prune-{round}"));
        for i in 0..12 {
            sql(
                &d.join("src.db"),
                &format!("UPDATE t SET v = 'r{round}i{i}' || id WHERE id % 12 = {i};"),
            );
            backup(d, &url, &["--full"]);
        }
        let verify = cmd(d)
            .args(["verify", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 * round));
        ok(&["prune", &url, "--keep-last", "1"], d);
        let out = verify.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}: {text}");
        assert!(text.contains("is intact"), "round {round}: {text}");
        assert_eq!(list(d, &url).len(), 1, "round {round}");
        assert_same_dump(
            &restore(d, &url, None, &format!("r{round}.db")),
            &dump(&d.join("src.db")),
            &format!("round {round}"),
        );
    }
}

/// A damaged seal of the newest archive (bit rot, a bad write by another tool) must not stop
/// the backups to the bucket: the next run is a full archive after it, saying why; verify still
/// reports the seal; the newest point restores exactly. Before, every later backup failed.
#[test]
fn a_damaged_newest_seal_does_not_stop_the_backups() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("damagedseal");
    backup(d, &url, &[]);
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'second' WHERE id % 3 = 0;",
    );
    backup(d, &url, &[]);
    assert_eq!(
        http(
            "PUT",
            "/damagedseal/tidemark-000002-incr.json",
            b"{\"archive\": \"tidemark-000002-incr-0"
        ),
        200
    );
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'third' WHERE id % 5 = 0;",
    );
    let out = backup(d, &url, &[]);
    assert!(out.contains("Archive (full)"), "{out}");
    assert!(
        out.contains("tidemark-000002-incr.json") && out.contains("cannot be read"),
        "says why: {out}"
    );
    let v = run(&["verify", &url], d);
    assert_eq!(v.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&v.stderr).contains("tidemark-000002-incr.json"));
    assert_same_dump(
        &restore(d, &url, None, "after.db"),
        &dump(&d.join("src.db")),
        "the full after the damaged seal",
    );
    sql(&d.join("src.db"), "DELETE FROM t WHERE id % 7 = 0;");
    let out = backup(d, &url, &[]);
    assert!(out.contains("Archive (incremental)"), "{out}");
    assert_same_dump(
        &restore(d, &url, None, "later.db"),
        &dump(&d.join("src.db")),
        "an incremental on the new full",
    );
}

/// An archive object gone from the bucket while its seal is still there is damage, as a local
/// archive that cannot be read is: verify and a restore that needs it exit 3 naming it (before:
/// the restore failed with exit 1, an I/O error, as if a prune had removed it meanwhile); a
/// point that does not need it restores exactly (read back with the sqlite3 shell).
#[test]
fn an_archive_object_gone_under_its_seal_is_damage() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("objectgone");
    backup(d, &url, &[]);
    let first = dump(&d.join("src.db"));
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'second' WHERE id % 3 = 0;",
    );
    backup(d, &url, &[]);
    let listed = list(d, &url);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        http("DELETE", "/objectgone/tidemark-000002-incr.zip", b""),
        204
    );
    let v = run(&["verify", &url], d);
    assert_eq!(v.status.code(), Some(3), "{v:?}");
    assert!(String::from_utf8_lossy(&v.stderr).contains("tidemark-000002-incr.zip"));
    let r = run(&["restore", "--from", &url, "--to", "sqlite:no.db"], d);
    assert_eq!(r.status.code(), Some(3), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stderr).contains("missing, while its seal is there"));
    assert!(!d.join("no.db").exists());
    let out = list(d, &url);
    let at = &out[0].2;
    assert_same_dump(
        &restore(d, &url, Some(at), "first.db"),
        &first,
        "the first point",
    );
}

/// A seal a newer tidemark wrote (its manifest says format v99) is refused as a local
/// archive of a newer format is: not damage (exit 1, not 3), named, and nothing is read as
/// this tidemark's format or written after it. It used to be read as format 2, and a backup
/// continued the chain with a format-2 archive.
#[test]
fn a_seal_of_a_newer_format_is_refused_not_read_as_this_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let url = bucket("newerseal");
    backup(d, &url, &[]);
    let seal = "/newerseal/tidemark-000001-full.json";
    let resp = conformance_tests::s3::request("GET", seal, b"");
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response body")
        + 4;
    let mut json: serde_json::Value = serde_json::from_slice(&resp[at..]).unwrap();
    json["manifest"]["format_version"] = 99.into();
    assert_eq!(http("PUT", seal, &serde_json::to_vec(&json).unwrap()), 200);
    sql(&d.join("src.db"), "UPDATE t SET v = 'later' WHERE id = 1;");
    for args in [
        vec!["backup", "--source", "sqlite:src.db", "--to", &url],
        vec!["verify", &url],
        vec!["list", &url],
        vec!["restore", "--from", &url, "--to", "sqlite:no.db"],
    ] {
        let out = run(&args, d);
        common::assert_refused_as_newer(&out, &args, "v99 is not supported");
    }
    assert!(!d.join("no.db").exists());
    let listed = conformance_tests::s3::request("GET", "/newerseal?list-type=2", b"");
    let listed = String::from_utf8_lossy(&listed);
    assert!(
        !listed.contains("tidemark-000002"),
        "nothing written after it: {listed}"
    );
}
