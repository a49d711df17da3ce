//! `tidemark run --config FILE`: scheduled jobs with a full archive every N incrementals,
//! retention after each run, retries of failed runs, and a clean stop on SIGTERM.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::archive_names as archives;
use common::{assert_same_dump, dump, fails, ok, sigterm, sql, tidemark};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn source(d: &Path) {
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'one'), (2, 'two');",
    );
    ok(&["track", "--source", "sqlite:app.db"], d);
}

const CONFIG: &str = r#"
[[job]]
name = "app-archive"
source = "sqlite:app.db"
to = "archives"
compression = "zstd"
interval = "1s"
full_every = 2
[job.retention]
keep_last = 2

[[job]]
name = "app-folder"
source = "sqlite:app.db"
to = "folder"
format = "folder"
interval = 1
"#;

#[test]
fn full_every_and_retention_over_runs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    std::fs::write(d.join("jobs.toml"), CONFIG).unwrap();
    let mut logs = String::new();
    for round in 1..=5 {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({}, 'round {round}');", round + 10),
        );
        logs.push_str(&ok(&["run", "--config", "jobs.toml", "--once"], d));
    }
    // Runs 1-5: full, incr, incr, full (2 incrementals since the last full), incr. After run
    // 5, keep_last 2 keeps 000004 and 000005; 000001-000003 go (nothing kept needs them).
    let names = archives(&d.join("archives"));
    let kinds: Vec<&str> = names.iter().map(|n| &n[16..20]).collect();
    assert_eq!(kinds, ["full", "incr"], "{names:?}\n{logs}");
    // The two jobs follow one database: neither trims the change log past the other.
    assert!(!logs.contains("not possible"), "{logs}");
    assert!(names[0].starts_with("tidemark-000004"), "{names:?}");
    assert!(
        logs.contains("job app-archive: pruned tidemark-000001"),
        "{logs}"
    );
    assert_eq!(logs.matches("job app-folder: Backup").count(), 5, "{logs}");
    ok(&["verify", "archives"], d);
    ok(&["verify", "folder"], d);
    let want = dump(&d.join("app.db"));
    ok(&["restore", "--from", "archives", "--to", "sqlite:a.db"], d);
    assert_same_dump(&dump(&d.join("a.db")), &want, "archive job");
    ok(&["restore", "--from", "folder", "--to", "sqlite:f.db"], d);
    assert_same_dump(&dump(&d.join("f.db")), &want, "folder job");
}

#[test]
fn runs_on_its_interval_until_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    std::fs::write(d.join("jobs.toml"), CONFIG).unwrap();
    let child = Command::new(common::bin())
        .args(["run", "--config", "jobs.toml"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A writer commits while the schedule runs.
    let start = Instant::now();
    let mut n = 100;
    while start.elapsed() < Duration::from_millis(3500) {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({n}, 'w');"),
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sigterm(child);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = log.matches("job app-archive: Archive").count();
    assert!(
        (3..=5).contains(&runs),
        "{runs} runs in 3.5 s at 1 s:\n{log}"
    );
    // What the backups hold is some state the writer produced; the newest restores exactly
    // to the database as of its checkpoint, and everything verifies.
    ok(&["verify", "archives"], d);
    ok(&["verify", "folder"], d);
}

#[test]
fn failed_runs_are_retried_and_reported() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    std::fs::write(
        d.join("jobs.toml"),
        r#"
[[job]]
name = "gone"
source = "sqlite:missing.db"
to = "x"
interval = "1h"
retries = 1
retry_delay = 0.2

[[job]]
name = "good"
source = "sqlite:app.db"
to = "good"
interval = "1h"
"#,
    )
    .unwrap();
    let out = tidemark(&["run", "--config", "jobs.toml", "--once"], d);
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("job gone: run failed (attempt 1 of 2)"),
        "{log}"
    );
    assert!(log.contains("missing.db"), "{log}");
    assert!(
        log.contains("(attempt 2 of 2)") && log.contains("giving up until the next run"),
        "{log}"
    );
    assert!(log.contains("job good: Archive (full)"), "{log}");
    assert!(!d.join("x").exists() || archives(&d.join("x")).is_empty());
}

fn logged_changes(db: &Path) -> u64 {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("SELECT count(*) FROM _tidemark_changes;")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn jobs_sharing_a_store_trim_its_change_log_only_to_the_oldest_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    // `blocked` is a file, so that job fails every run until it is removed.
    std::fs::write(d.join("blocked"), "not a directory").unwrap();
    std::fs::write(
        d.join("jobs.toml"),
        r#"
[[job]]
name = "good"
source = "sqlite:app.db"
to = "good"
interval = "1h"

[[job]]
name = "lagging"
source = "sqlite:./app.db"
to = "blocked"
format = "folder"
interval = "1h"
retries = 0
"#,
    )
    .unwrap();
    let round = |n: u32| {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({}, 'round {n}');", n + 10),
        );
        let out = tidemark(&["run", "--config", "jobs.toml", "--once"], d);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for n in 1..=3 {
        let (code, log) = round(n);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("job lagging: run failed"), "{log}");
        // Alone, `good` would trim every change it has backed up; `lagging` has backed up
        // nothing yet, so every change stays.
        assert_eq!(logged_changes(&d.join("app.db")), u64::from(n), "{log}");
    }
    std::fs::remove_file(d.join("blocked")).unwrap();
    let (code, log) = round(4);
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = round(5);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("job good: Archive (incremental)"), "{log}");
    assert!(log.contains("job lagging: Backup (incremental)"), "{log}");
    // Both jobs are at the newest change now, and the log was trimmed to it.
    assert_eq!(logged_changes(&d.join("app.db")), 0, "{log}");
    let want = dump(&d.join("app.db"));
    ok(&["restore", "--from", "blocked", "--to", "sqlite:l.db"], d);
    assert_same_dump(&dump(&d.join("l.db")), &want, "lagging job");
}

#[test]
fn bad_configs_are_refused_before_anything_runs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for (text, want) in [
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = \"5x\"\n", "unknown unit"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = 5\nevery = 3\n", "unknown field"),
        ("[[job]]\nsource = \"app.db\"\nto = \"a\"\ninterval = 5\n", "KIND:PATH"),
        (
            "[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\nformat = \"folder\"\ninterval = 5\n[job.retention]\nkeep_last = 1\n",
            "archive format",
        ),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = 5\ncompression = \"lz4\"\n", "lz4"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\n", "no schedule"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = 5\ncron = \"@daily\"\n", "not both"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ncron = \"0 99 * * *\"\n", "cron `0 99 * * *`"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ncron = \"@daily\"\nfirst_time = \"03:00\"\n", "goes with `interval`"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a/${DATE:yyyy-QQ}\"\ninterval = 5\n", "QQ"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = 5\nexclude = [\"x\"]\n", "glob source"),
        ("[[job]]\nsource = \"sqlite:*\"\nto = \"a\"\ninterval = 5\n", "put ${DBNAME} in `to`"),
        ("[[job]]\nsource = \"sqlite:nothing-*.db\"\nto = \"a\"\ninterval = 5\n", "matches no store"),
        ("[[job]]\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = 5\nenabled = false\n", "every job is disabled"),
    ] {
        std::fs::write(d.join("bad.toml"), text).unwrap();
        let err = fails(&["run", "--config", "bad.toml", "--once"], d);
        assert!(err.contains("bad.toml") && err.contains(want), "{text}\n{err}");
        assert!(!d.join("a").exists(), "{text}: a job ran");
    }
}

/// A job with `compact = true` compacts after each run (before its retention): after seven
/// runs at fanout 2 the chain holds compacted archives, verifies, and restores to exactly
/// the database the `sqlite3` shell wrote, reading fewer archives than there are backups.
#[test]
fn a_job_compacts_after_each_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    std::fs::write(
        d.join("jobs.toml"),
        r#"
[[job]]
name = "live-ish"
source = "sqlite:app.db"
to = "archives"
compression = "zstd"
interval = "1s"
compact = true
fanout = 2
"#,
    )
    .unwrap();
    let mut logs = String::new();
    for round in 1..=7 {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({}, 'round {round}'); UPDATE t SET v = 'r{round}' WHERE id = 1;", round + 10),
        );
        logs.push_str(&ok(&["run", "--config", "jobs.toml", "--once"], d));
    }
    assert!(
        logs.contains("job live-ish: compacted 000003..000004"),
        "{logs}"
    );
    let names = archives(&d.join("archives"));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("tidemark-000002-000004-incr")),
        "{names:?}"
    );
    // Compacted in the job's codec, as its backups (they were deflate-9).
    for name in &names {
        let file = std::fs::File::open(d.join("archives").join(name)).unwrap();
        assert_eq!(
            common::entry_methods(file),
            ["Zstd".to_string()].into(),
            "{name}"
        );
    }
    ok(&["verify", "archives"], d);
    let out = ok(&["restore", "archives", "--to", "sqlite:r.db", "--json"], d);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(summary["archives"].as_u64().unwrap() < 7, "{out}");
    assert_same_dump(
        &dump(&d.join("r.db")),
        &dump(&d.join("app.db")),
        "compacted job",
    );
}

/// A job over every database a glob matches (less the excluded), each into a destination
/// named by `${DBNAME}`; `run --check` lists each with its next five run times from its cron
/// expression, and `run --once` backs each one up, as the `sqlite3` shell reads back.
#[test]
fn a_glob_job_backs_up_each_store_and_check_shows_the_times() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("dbs")).unwrap();
    for name in ["alpha", "beta", "scratch"] {
        sql(
            &d.join(format!("dbs/{name}.db")),
            &format!("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, '{name}');"),
        );
    }
    std::fs::write(
        d.join("jobs.toml"),
        r#"
[[job]]
name = "all"
source = "sqlite:dbs/*.db"
exclude = ["scratch*"]
to = "bk/${DBNAME}"
cron = "0 30 2 * * *"
[job.retention]
keep_within = "30d"
keep_last = 3
"#,
    )
    .unwrap();
    let out = ok(&["run", "--config", "jobs.toml", "--check"], d);
    assert!(out.contains("2 job(s) ready"), "{out}");
    for name in ["alpha", "beta"] {
        assert!(
            out.contains(&format!(
                "job all ({name}): sqlite:dbs/{name}.db -> bk/{name}"
            )),
            "{out}"
        );
    }
    assert!(!out.contains("scratch"), "{out}");
    let times: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(times.len(), 10, "{out}");
    assert!(times.iter().all(|l| l.contains(" 02:30:00 ")), "{out}");
    assert!(!d.join("bk").exists(), "--check runs nothing");
    let log = ok(&["run", "--config", "jobs.toml", "--once"], d);
    for name in ["alpha", "beta"] {
        assert_eq!(archives(&d.join(format!("bk/{name}"))).len(), 1, "{log}");
        ok(
            &[
                "restore",
                &format!("bk/{name}"),
                "--to",
                &format!("sqlite:r-{name}.db"),
            ],
            d,
        );
        assert_same_dump(
            &dump(&d.join(format!("r-{name}.db"))),
            &dump(&d.join(format!("dbs/{name}.db"))),
            name,
        );
    }
    assert!(!d.join("bk/scratch").exists(), "{log}");
}

/// Reads one HTTP response (the server closes the connection) for `GET path`.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of a metric line `name{labels} value` in a Prometheus exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP server on loopback that answers every request 200 and keeps the paths requested
/// (the heartbeat and failure URLs a job calls): its port and those paths.
fn heartbeat_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let paths = seen.clone();
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            paths
                .lock()
                .unwrap()
                .push(line.split_whitespace().nth(1).unwrap_or("").to_string());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

/// `run --metrics-addr` serves Prometheus metrics that a plain HTTP GET reads (runs by result,
/// last success, chain length, lag); each successful run calls the job's heartbeat URL and
/// a failed one its failure URL, received by a test HTTP server; SIGTERM still stops cleanly.
#[test]
fn metrics_are_scraped_and_heartbeats_received() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let (hb_port, seen) = heartbeat_server();
    let metrics_port = free_port();
    std::fs::write(
        d.join("jobs.toml"),
        format!(
            r#"
[[job]]
name = "good"
source = "sqlite:app.db"
to = "archives"
interval = "1s"
heartbeat_url = "http://127.0.0.1:{hb_port}/ping/good"
failure_url = "http://127.0.0.1:{hb_port}/fail/good"

[[job]]
name = "gone"
source = "sqlite:missing.db"
to = "gone"
interval = "1s"
retries = 0
heartbeat_url = "http://127.0.0.1:{hb_port}/ping/gone"
failure_url = "http://127.0.0.1:{hb_port}/fail/gone"
"#
        ),
    )
    .unwrap();
    let child = Command::new(common::bin())
        .args([
            "run",
            "--config",
            "jobs.toml",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut scraped = String::new();
    common::wait_for("two good runs and a failed one in the metrics", || {
        if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err() {
            return false;
        }
        scraped = http_get(metrics_port, "/metrics");
        metric(
            &scraped,
            "tidemark_runs_total{job=\"good\",result=\"success\"}",
        )
        .is_some_and(|n| n >= 2.0)
            && metric(
                &scraped,
                "tidemark_runs_total{job=\"gone\",result=\"failure\"}",
            )
            .is_some_and(|n| n >= 1.0)
    });
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    let success = metric(
        &scraped,
        "tidemark_last_success_timestamp_seconds{job=\"good\"}",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - success).abs() < 60.0, "{scraped}");
    assert!(
        metric(&scraped, "tidemark_chain_archives{job=\"good\"}").unwrap() >= 2.0,
        "{scraped}"
    );
    assert!(
        metric(&scraped, "tidemark_backup_lag_seconds{job=\"good\"}").unwrap() < 60.0,
        "{scraped}"
    );
    assert!(
        metric(&scraped, "tidemark_written_bytes_total{job=\"good\"}").unwrap() > 0.0,
        "{scraped}"
    );
    assert!(metric(
        &scraped,
        "tidemark_last_success_timestamp_seconds{job=\"gone\"}"
    )
    .is_none());
    assert!(http_get(metrics_port, "/other").starts_with("HTTP/1.1 404"));
    common::wait_for("the heartbeats", || {
        let seen = seen.lock().unwrap();
        seen.iter().any(|p| p == "/ping/good") && seen.iter().any(|p| p == "/fail/gone")
    });
    let out = sigterm(child);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains(&format!(
            "metrics at http://127.0.0.1:{metrics_port}/metrics"
        )),
        "{log}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        !seen.iter().any(|p| p == "/fail/good" || p == "/ping/gone"),
        "{seen:?}"
    );
}

/// `backup --live --metrics-addr` serves the same metrics for its destination while the
/// `sqlite3` shell writes: runs counted as they complete, and a lag of about a flush interval.
#[test]
fn a_live_backup_serves_metrics() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    let port = free_port();
    let child = Command::new(common::bin())
        .args([
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "live",
            "--live",
            "--interval",
            "0.2",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let series = "tidemark_runs_total{job=\"live live\",result=\"success\"}";
    let mut n = 100;
    let mut scraped = String::new();
    common::wait_for("three live runs in the metrics", || {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({n}, 'w');"),
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return false;
        }
        scraped = http_get(port, "/metrics");
        metric(&scraped, series).is_some_and(|v| v >= 3.0)
    });
    let lag = metric(&scraped, "tidemark_backup_lag_seconds{job=\"live live\"}").unwrap();
    assert!(lag < 10.0, "{scraped}");
    assert!(
        metric(
            &scraped,
            "tidemark_written_records_total{job=\"live live\"}"
        )
        .unwrap()
            >= 2.0
    );
    let out = sigterm(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run --json`: every line of the log is a JSON object of schema 1, and each run gives a
/// `job_run` object with its result and figures.
#[test]
fn run_speaks_json() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    std::fs::write(
        d.join("jobs.toml"),
        "[[job]]\nname = \"good\"\nsource = \"sqlite:app.db\"\nto = \"a\"\ninterval = \"1h\"\n\n\
         [[job]]\nname = \"gone\"\nsource = \"sqlite:missing.db\"\nto = \"b\"\ninterval = \"1h\"\nretries = 0\n",
    )
    .unwrap();
    let out = tidemark(&["run", "--config", "jobs.toml", "--once", "--json"], d);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.iter().all(|l| l["schema"] == 1), "{lines:?}");
    let run = |job: &str| {
        lines
            .iter()
            .find(|l| l["type"] == "job_run" && l["job"] == job)
            .unwrap_or_else(|| panic!("no job_run for {job}: {lines:?}"))
            .clone()
    };
    let good = run("good");
    assert_eq!(good["result"], "success");
    assert_eq!(good["records_written"], 2);
    assert!(good["bytes_written"].as_u64().unwrap() > 0);
    let gone = run("gone");
    assert_eq!(gone["result"], "failure");
    assert!(gone["records_written"].is_null());
    assert!(lines
        .iter()
        .any(|l| l["type"] == "log" && l["message"].as_str().unwrap().contains("missing.db")));
}

/// RocksDB and sled under `tidemark run`, read back with their own libraries: glob jobs (one
/// backup per database, `${DBNAME}` and `${DATE:yyyy}` in the destination, an excluded
/// database left alone) on an interval from a `first_time` and on a cron, whose times
/// `--check` lists; two `--once` rounds (a full archive, then an incremental of the
/// application's puts and deletions) restored equal; then `run --metrics-addr` with heartbeat
/// URLs over a RocksDB database this process holds and writes, and a sled one: runs counted
/// in the metrics, heartbeats received, and the last run's archive restores to the
/// application's database.
#[cfg(all(feature = "rocksdb", feature = "sled"))]
#[test]
fn key_value_stores_under_schedules_metrics_and_heartbeats() {
    use common::kv::{kv_content, kv_write, Content};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let puts = |round: u32| -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        (0..50u32)
            .map(|i| {
                let tree = if i % 2 == 0 { "a" } else { "b" };
                (
                    tree,
                    format!("k{i:02}").into_bytes(),
                    format!("r{round}.{i}").into_bytes(),
                )
            })
            .collect()
    };
    let stores = [
        ("rocksdb", "rocks/alpha"),
        ("rocksdb", "rocks/beta"),
        ("rocksdb", "rocks/scratch"),
        ("sled", "sleds/one"),
        ("sled", "sleds/two"),
    ];
    for (kind, path) in stores {
        std::fs::create_dir_all(d.join(path).parent().unwrap()).unwrap();
        kv_write(kind, &d.join(path), &puts(1), &[]);
    }
    std::fs::write(
        d.join("jobs.toml"),
        r#"
[[job]]
name = "rocks"
source = "rocksdb:rocks/*"
exclude = ["scratch"]
to = "bk/${DBNAME}-${DATE:yyyy}"
interval = "1d"
first_time = "02:30"
compression = "zstd"
[job.retention]
keep_last = 3

[[job]]
name = "trees"
source = "sled:sleds/*"
to = "sk/${DBNAME}"
cron = "0 15 4 * * *"
"#,
    )
    .unwrap();
    let out = ok(&["run", "--config", "jobs.toml", "--check"], d);
    assert!(out.contains("4 job(s) ready"), "{out}");
    for (job, name, source, to) in [
        ("rocks", "alpha", "rocksdb:rocks/alpha", "bk/alpha-2"),
        ("rocks", "beta", "rocksdb:rocks/beta", "bk/beta-2"),
        ("trees", "one", "sled:sleds/one", "sk/one"),
        ("trees", "two", "sled:sleds/two", "sk/two"),
    ] {
        assert!(
            out.contains(&format!("job {job} ({name}): {source} -> {to}")),
            "{out}"
        );
    }
    assert!(!out.contains("scratch"), "{out}");
    let times: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(times.len(), 20, "{out}");
    assert_eq!(
        times.iter().filter(|l| l.contains(" 02:30:00 ")).count(),
        10,
        "{out}"
    );
    assert_eq!(
        times.iter().filter(|l| l.contains(" 04:15:00 ")).count(),
        10,
        "{out}"
    );
    assert!(
        !d.join("bk").exists() && !d.join("sk").exists(),
        "--check runs nothing"
    );

    // The destination `${DBNAME}-${DATE:yyyy}` names: the year is the run's local one.
    let destination = |name: &str| -> std::path::PathBuf {
        let prefix = format!("{name}-");
        let found: Vec<_> = std::fs::read_dir(d.join("bk"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        let year = &found[0][prefix.len()..];
        assert!(
            year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit()),
            "{found:?}"
        );
        d.join("bk").join(&found[0])
    };
    let restores_to = |kind: &str, from: &Path, name: &str, want: &Content| {
        let from = from.to_str().unwrap();
        common::kv::assert_kv_restores(ok, d, kind, from, name, want);
    };
    let log = ok(&["run", "--config", "jobs.toml", "--once"], d);
    assert_eq!(log.matches("Archive (full)").count(), 4, "{log}");
    for (kind, path) in stores {
        kv_write(
            kind,
            &d.join(path),
            &[
                ("b", b"k01".to_vec(), b"changed".to_vec()),
                ("c", b"new".to_vec(), b"\x00\xff".to_vec()),
            ],
            &[("a", b"k02"), ("b", b"k03")],
        );
    }
    let log = ok(&["run", "--config", "jobs.toml", "--once"], d);
    assert_eq!(log.matches("Archive (incremental)").count(), 4, "{log}");
    assert_eq!(
        log.matches("2 records written, 2 deleted").count(),
        4,
        "each store's incremental took the two puts and two deletions: {log}"
    );
    for name in ["alpha", "beta"] {
        let dest = destination(name);
        assert_eq!(archives(&dest).len(), 2, "{log}");
        let want = kv_content("rocksdb", &d.join("rocks").join(name));
        restores_to("rocksdb", &dest, &format!("r-{name}"), &want);
    }
    for name in ["one", "two"] {
        let want = kv_content("sled", &d.join("sleds").join(name));
        restores_to(
            "sled",
            &d.join("sk").join(name),
            &format!("r-{name}"),
            &want,
        );
    }
    assert!(
        !d.join("bk/scratch").exists() && !log.contains("scratch"),
        "{log}"
    );

    // Metrics and heartbeats, the RocksDB database held and written by this process.
    let (hb_port, seen) = heartbeat_server();
    let metrics_port = free_port();
    std::fs::write(
        d.join("watched.toml"),
        format!(
            r#"
[[job]]
name = "rocks"
source = "rocksdb:rocks/alpha"
to = "m-rocks"
interval = "1s"
heartbeat_url = "http://127.0.0.1:{hb_port}/ping/rocks"
failure_url = "http://127.0.0.1:{hb_port}/fail/rocks"

[[job]]
name = "trees"
source = "sled:sleds/one"
to = "m-sled"
interval = "1s"
heartbeat_url = "http://127.0.0.1:{hb_port}/ping/trees"
failure_url = "http://127.0.0.1:{hb_port}/fail/trees"
"#
        ),
    )
    .unwrap();
    let app = d.join("rocks/alpha");
    let db = {
        let mut opts = rocksdb::Options::default();
        opts.set_wal_ttl_seconds(3600);
        let names = rocksdb::DB::list_cf(&opts, &app).unwrap();
        rocksdb::DB::open_cf(&opts, &app, &names).unwrap()
    };
    let child = Command::new(common::bin())
        .args(["run", "--config", "watched.toml"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let runs = |job: &str| -> f64 {
        if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err() {
            return 0.0;
        }
        let scraped = http_get(metrics_port, "/metrics");
        let series = format!("tidemark_runs_total{{job=\"{job}\",result=\"success\"}}");
        metric(&scraped, &series).unwrap_or(0.0)
    };
    let mut next = 100u32;
    common::wait_for("three successful runs of each job", || {
        db.put(format!("w{next}"), format!("v{next}")).unwrap();
        db.delete(format!("w{}", next - 1)).unwrap();
        db.flush_wal(true).unwrap();
        next += 1;
        std::thread::sleep(Duration::from_millis(50));
        runs("rocks") >= 3.0 && runs("trees") >= 3.0
    });
    // A run that starts after the last write holds it: two more successes make one sure.
    db.put("last", "write").unwrap();
    db.flush_wal(true).unwrap();
    let after = runs("rocks");
    common::wait_for("two runs after the last write", || {
        runs("rocks") >= after + 2.0
    });
    let scraped = http_get(metrics_port, "/metrics");
    for job in ["rocks", "trees"] {
        assert!(
            metric(
                &scraped,
                &format!("tidemark_chain_archives{{job=\"{job}\"}}")
            )
            .unwrap()
                >= 3.0,
            "{scraped}"
        );
        let failed = format!("tidemark_runs_total{{job=\"{job}\",result=\"failure\"}}");
        assert!(metric(&scraped, &failed).unwrap_or(0.0) == 0.0, "{scraped}");
    }
    common::wait_for("both jobs' heartbeats", || {
        let seen = seen.lock().unwrap();
        seen.iter().any(|p| p == "/ping/rocks") && seen.iter().any(|p| p == "/ping/trees")
    });
    let out = sigterm(child);
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(
        !seen.lock().unwrap().iter().any(|p| p.starts_with("/fail/")),
        "{:?}",
        seen.lock().unwrap()
    );
    drop(db);
    let want = kv_content("rocksdb", &app);
    assert!(want.keys().any(|(_, k)| k == b"last"));
    restores_to("rocksdb", &d.join("m-rocks"), "m-rocks-restored", &want);
    let want = kv_content("sled", &d.join("sleds/one"));
    restores_to("sled", &d.join("m-sled"), "m-sled-restored", &want);
}
