//! Encryption at rest, end to end: archive chains sealed with a passphrase or to age
//! recipients, locally and on a real S3-compatible server (moto). The plaintext of known
//! records (and the table's column names) appears nowhere in the destination, although an
//! unencrypted chain of the same store shows it; restores read back equal in the `sqlite3`
//! shell; a wrong or missing key fails before the restore target is touched; a plain archive
//! never joins a sealed chain, nor a sealed one a plain chain.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use age::secrecy::ExposeSecret;
use common::{assert_same_dump, assert_unchanged, dump, snapshot_files, sql};
use std::path::Path;
use std::process::{Command, Output};

/// Text in a record that must never show in an encrypted destination.
const CANARY: &str = "canary-plaintext-7Qz4";
/// A column name: the schema is in the manifests, sealed too.
const COLUMN: &str = "secret_column_name";

/// `tidemark` in `cwd`, with its cache (the key state of encrypted chains) under `cwd`, and the
/// environment that points an S3 client at the moto server when `s3` is set.
fn command(cwd: &Path, s3: bool) -> Command {
    if s3 {
        common::against_moto(cwd)
    } else {
        common::in_own_cache(cwd)
    }
}

fn cmd(cwd: &Path, args: &[&str], s3: bool) -> Output {
    command(cwd, s3).args(args).output().unwrap()
}

fn ok(cwd: &Path, args: &[&str], s3: bool) -> String {
    common::succeeds(&mut command(cwd, s3), args)
}

fn fails(cwd: &Path, args: &[&str], s3: bool) -> String {
    common::refused(&mut command(cwd, s3), args)
}

/// A tracked store whose rows carry the canary.
fn source(d: &Path) {
    sql(
        &d.join("src.db"),
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, {COLUMN} TEXT, b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO t SELECT i, '{CANARY}-' || i, randomblob(i % 40) FROM n;"
        ),
    );
    ok(d, &["track", "--source", "sqlite:src.db"], false);
}

/// The arguments of an archive backup of the test store to `to`, then `extra`.
fn archive_backup<'a>(to: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "backup",
        "--source",
        "sqlite:src.db",
        "--to",
        to,
        "--format",
        "archive",
    ];
    args.extend_from_slice(extra);
    args
}

fn backup(d: &Path, to: &str, keys: &[&str], s3: bool) -> String {
    // Stored entries: without encryption the records are readable in the file, so the
    // absence of the canary below is the encryption's doing, not compression's.
    let mut args = archive_backup(to, &["--compression", "none"]);
    args.extend_from_slice(keys);
    ok(d, &args, s3)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Whether any file under `dir` shows `needle`.
fn shows(dir: &Path, needle: &str) -> Vec<String> {
    snapshot_files(dir)
        .into_iter()
        .filter(|(_, b)| contains(b, needle))
        .map(|(n, _)| n)
        .collect()
}

/// A new age identity: (identity file, its recipient).
fn identity(d: &Path, name: &str) -> (String, String) {
    let id = age::x25519::Identity::generate();
    let path = d.join(name);
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (path.display().to_string(), id.to_public().to_string())
}

#[test]
fn a_passphrase_chain_hides_its_records_and_restores_only_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    std::fs::write(d.join("pass"), "correct horse battery\n").unwrap();
    std::fs::write(d.join("wrong"), "correct horse battery staple\n").unwrap();
    let key = ["--encrypt-passphrase-file", "pass"];

    // The control: the same store, unencrypted and uncompressed, shows the canary.
    backup(d, "plain", &[], false);
    assert!(!shows(&d.join("plain"), CANARY).is_empty());
    assert!(!shows(&d.join("plain"), COLUMN).is_empty());

    let out = backup(d, "bk", &key, false);
    assert!(out.contains("Archive (full)"), "{out}");
    sql(
        &d.join("src.db"),
        &format!(
            "INSERT INTO t VALUES (1000, '{CANARY}-new', x'00ff'); DELETE FROM t WHERE id = 7;
             UPDATE t SET b = NULL WHERE id = 8;"
        ),
    );
    let out = backup(d, "bk", &key, false);
    assert!(out.contains("Archive (incremental)"), "{out}");
    let bk = d.join("bk");
    assert!(bk.join(".tidemark-key").is_file());
    assert_eq!(
        shows(&bk, CANARY),
        Vec::<String>::new(),
        "plaintext records"
    );
    assert_eq!(shows(&bk, COLUMN), Vec::<String>::new(), "plaintext schema");
    // The key state (every key of the backup) stays on this machine, not in the destination.
    assert!(!bk.join(".tidemark-state").exists());
    assert!(!shows(&d.join("cache"), "tidemark-archive-state").is_empty());

    ok(
        d,
        &["verify", "bk", "--encrypt-passphrase-file", "pass"],
        false,
    );
    let listing = ok(
        d,
        &["list", "bk", "--encrypt-passphrase-file", "pass"],
        false,
    );
    assert_eq!(listing.matches("tidemark-00000").count(), 2, "{listing}");

    // Restore with the key: equal to the source in the sqlite3 shell.
    ok(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:out.db",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert_same_dump(
        &dump(&d.join("out.db")),
        &dump(&d.join("src.db")),
        "restored from the encrypted chain",
    );

    // A wrong passphrase or none: refused before the target is touched (here an existing
    // store given with --force).
    sql(
        &d.join("target.db"),
        "CREATE TABLE keep(x); INSERT INTO keep VALUES (1);",
    );
    let target = d.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::rename(d.join("target.db"), target.join("t.db")).unwrap();
    let before = snapshot_files(&target);
    for (keys, says) in [
        (&["--encrypt-passphrase-file", "wrong"][..], "did not open"),
        (&[][..], "this backup is encrypted"),
    ] {
        let mut args = vec!["restore", "bk", "--to", "sqlite:target/t.db", "--force"];
        args.extend_from_slice(keys);
        let err = fails(d, &args, false);
        assert!(err.contains(says), "{err}");
        assert_unchanged(&target, &before, "a refused restore");
    }
    // Without the key, verify checks what it can: each archive's stored bytes against the
    // CRC32 in its name; it says that the records need the key.
    let out = ok(d, &["verify", "bk"], false);
    assert!(
        out.contains("2 encrypted archives")
            && out.contains("intact as stored")
            && out.contains("--encrypt-passphrase-file"),
        "{out}"
    );

    // A plain archive never joins the sealed chain; an encrypted one never a plain chain.
    let chain_before = snapshot_files(&bk);
    let err = fails(d, &archive_backup("bk", &[]), false);
    assert!(err.contains("this backup is encrypted"), "{err}");
    let err = fails(
        d,
        &archive_backup("plain", &["--encrypt-passphrase-file", "pass"]),
        false,
    );
    assert!(err.contains("holds unencrypted archives"), "{err}");
    assert!(!d.join("plain/.tidemark-key").exists());
    // Encryption needs the archive format.
    let err = fails(
        d,
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "folder",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert!(err.contains("encryption applies to archives"), "{err}");
    let after = snapshot_files(&bk);
    for (name, bytes) in &chain_before {
        if name.starts_with("tidemark-") {
            assert!(after.get(name) == Some(bytes), "{name} changed");
        }
    }
    assert_eq!(
        after.keys().filter(|n| n.starts_with("tidemark-")).count(),
        2,
        "no archive was added"
    );

    // A flipped byte in a sealed archive: verify finds it, restore refuses it.
    let incr = after
        .keys()
        .find(|n| n.starts_with("tidemark-000002"))
        .unwrap()
        .clone();
    let path = bk.join(&incr);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let out = cmd(
        d,
        &["verify", "bk", "--encrypt-passphrase-file", "pass"],
        false,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&incr), "{text}");
    assert!(text.contains("does not authenticate"), "{text}");
    let out = cmd(d, &["verify", "bk", "--json"], false);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&incr) && text.contains("\"records_checked\":false"),
        "{text}"
    );
    let err = fails(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:again.db",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert!(err.contains(&incr), "{err}");
    assert!(!d.join("again.db").exists());
}

#[test]
fn recipients_encrypt_and_identities_open_a_chain_also_from_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    let (id, recipient) = identity(d, "id.txt");
    let (other, _) = identity(d, "other.txt");
    std::fs::write(d.join("pass"), "a passphrase\n").unwrap();
    // The key is wrapped to the recipient only: backing up again needs the identity (the
    // backup reads the newest archive's manifest, which is sealed).
    backup(d, "bk", &["--encrypt-recipient", &recipient], false);
    sql(&d.join("src.db"), "DELETE FROM t WHERE id < 100;");
    let err = fails(
        d,
        &archive_backup("bk", &["--encrypt-recipient", &recipient]),
        false,
    );
    assert!(err.contains("--encrypt-identity"), "{err}");
    let out = backup(d, "bk", &["--encrypt-identity", &id], false);
    assert!(out.contains("Archive (incremental)"), "{out}");
    assert_eq!(shows(&d.join("bk"), CANARY), Vec::<String>::new());

    let err = fails(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:out.db",
            "--encrypt-identity",
            &other,
        ],
        false,
    );
    assert!(err.contains("did not open"), "{err}");
    let err = fails(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:out.db",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert!(err.contains("wrapped for recipients only"), "{err}");
    assert!(!d.join("out.db").exists());
    ok(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:out.db",
            "--encrypt-identity",
            &id,
        ],
        false,
    );
    assert_same_dump(
        &dump(&d.join("out.db")),
        &dump(&d.join("src.db")),
        "identity",
    );
    // The first point too (every archive opens with the key, not only the newest).
    let listing = ok(d, &["list", "bk", "--encrypt-identity", &id], false);
    let first_to = listing
        .lines()
        .find(|l| l.starts_with("tidemark-000001"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("{listing}"))
        .to_string();
    ok(
        d,
        &[
            "restore",
            "bk",
            "--to",
            "sqlite:first.db",
            "--at",
            &first_to,
            "--encrypt-identity",
            &id,
        ],
        false,
    );
    assert_eq!(
        sql_count(&d.join("first.db")),
        300,
        "the first archive holds every row"
    );
    // Prune opens the chain with the identity, and keeps a readable chain.
    ok(
        d,
        &["prune", "bk", "--keep-last", "1", "--encrypt-identity", &id],
        false,
    );
    ok(d, &["verify", "bk", "--encrypt-identity", &id], false);

    // A scheduled job with a passphrase: encrypted from its first run.
    std::fs::write(
        d.join("jobs.toml"),
        "[[job]]\nsource = \"sqlite:src.db\"\nto = \"nightly\"\ninterval = \"1h\"\n\
         compression = \"none\"\nencrypt_passphrase_file = \"pass\"\n",
    )
    .unwrap();
    ok(d, &["run", "--once", "--config", "jobs.toml"], false);
    assert!(d.join("nightly/.tidemark-key").is_file());
    assert_eq!(shows(&d.join("nightly"), CANARY), Vec::<String>::new());
    ok(
        d,
        &[
            "restore",
            "nightly",
            "--to",
            "sqlite:job.db",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert_same_dump(&dump(&d.join("job.db")), &dump(&d.join("src.db")), "job");
    // Encryption in a folder job is refused when the config is read.
    std::fs::write(
        d.join("bad.toml"),
        "[[job]]\nsource = \"sqlite:src.db\"\nto = \"f\"\ninterval = \"1h\"\nformat = \"folder\"\n\
         encrypt_passphrase_file = \"pass\"\n",
    )
    .unwrap();
    let err = fails(d, &["run", "--check", "--config", "bad.toml"], false);
    assert!(
        err.contains("encryption applies to the archive format"),
        "{err}"
    );
}

fn sql_count(db: &Path) -> usize {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("SELECT count(*) FROM t")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[cfg(feature = "remote")]
#[test]
fn an_encrypted_chain_on_s3_hides_its_records_and_needs_its_key() {
    use conformance_tests::s3::{bucket, keys, request};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    std::fs::write(d.join("pass"), "s3 passphrase\n").unwrap();
    let (id, recipient) = identity(d, "id.txt");
    let url = format!("{}/app", bucket("sealed"));
    let key = [
        "--encrypt-passphrase-file",
        "pass",
        "--encrypt-recipient",
        &recipient,
    ];
    backup(d, &url, &key, true);
    sql(
        &d.join("src.db"),
        &format!(
            "INSERT INTO t VALUES (2000, '{CANARY}-remote', NULL); DELETE FROM t WHERE id = 3;"
        ),
    );
    let out = backup(d, &url, &["--encrypt-passphrase-file", "pass"], true);
    assert!(out.contains("Archive (incremental)"), "{out}");

    // Every object under the prefix, read raw from the server.
    let objects = keys("sealed");
    assert!(
        objects.iter().any(|k| k == "app/.tidemark-key"),
        "{objects:?}"
    );
    assert!(
        objects.iter().filter(|k| k.ends_with(".zip")).count() >= 2,
        "{objects:?}"
    );
    for k in &objects {
        let body = request("GET", &format!("/sealed/{k}"), b"");
        assert!(!contains(&body, CANARY), "{k} shows a record");
        assert!(!contains(&body, COLUMN), "{k} shows the schema");
    }

    ok(d, &["verify", &url, "--encrypt-identity", &id], true);
    let out = ok(d, &["verify", &url], true);
    assert!(out.contains("2 encrypted archives"), "{out}");
    ok(
        d,
        &[
            "restore",
            &url,
            "--to",
            "sqlite:out.db",
            "--encrypt-identity",
            &id,
        ],
        true,
    );
    assert_same_dump(
        &dump(&d.join("out.db")),
        &dump(&d.join("src.db")),
        "from S3",
    );

    std::fs::write(d.join("wrong"), "not it\n").unwrap();
    for (keys, says) in [
        (&["--encrypt-passphrase-file", "wrong"][..], "did not open"),
        (&[][..], "this backup is encrypted"),
    ] {
        let mut args = vec!["restore", url.as_str(), "--to", "sqlite:nope.db"];
        args.extend_from_slice(keys);
        let err = fails(d, &args, true);
        assert!(err.contains(says), "{err}");
        assert!(!d.join("nope.db").exists());
    }
    // No plain archive joins the sealed chain.
    let err = fails(d, &archive_backup(&url, &[]), true);
    assert!(err.contains("this backup is encrypted"), "{err}");
    assert_eq!(keys("sealed").len(), objects.len(), "nothing was added");
}

#[test]
fn a_live_backup_seals_every_archive_and_stops_cleanly() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    std::fs::write(d.join("pass"), "live passphrase\n").unwrap();
    let child = command(d, false)
        .args(archive_backup(
            "live",
            &[
                "--compression",
                "none",
                "--live",
                "--interval",
                "0.2",
                "--json",
                "--encrypt-passphrase-file",
                "pass",
            ],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let archives = || common::files_ending(&d.join("live"), ".zip");
    common::wait_for("the initial archive", || archives() >= 1);
    for i in 0..3 {
        sql(
            &d.join("src.db"),
            &format!(
                "INSERT INTO t VALUES ({}, '{CANARY}-live-{i}', NULL);",
                5000 + i
            ),
        );
        common::wait_for("an incremental archive", || archives() >= 2 + i);
    }
    common::stop_cleanly(child);
    assert_eq!(shows(&d.join("live"), CANARY), Vec::<String>::new());
    assert!(!d.join("live/.tidemark-state").exists());
    ok(
        d,
        &["verify", "live", "--encrypt-passphrase-file", "pass"],
        false,
    );
    ok(
        d,
        &[
            "restore",
            "live",
            "--to",
            "sqlite:out.db",
            "--encrypt-passphrase-file",
            "pass",
        ],
        false,
    );
    assert_same_dump(&dump(&d.join("out.db")), &dump(&d.join("src.db")), "live");
}

#[cfg(all(feature = "rocksdb", feature = "sled"))]
#[test]
fn rocksdb_and_sled_chains_are_sealed_and_restore_with_the_key() {
    use common::kv::{differences, kv_content, kv_write};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (id, recipient) = identity(d, "id.txt");
    for kind in ["rocksdb", "sled"] {
        let app = d.join(format!("{kind}-app"));
        // Thousands per tree: a sled restore applies batches of at most 1,000 records.
        let puts: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..6000)
            .map(|i| {
                let c = if i % 2 == 0 { "alpha" } else { "orders" };
                (
                    c,
                    format!("k{i:04}").into_bytes(),
                    format!("{CANARY}-{kind}-{i}").into_bytes(),
                )
            })
            .collect();
        kv_write(kind, &app, &puts, &[]);
        let source = format!("{kind}:{}", app.display());
        let to = format!("{kind}-bk");
        let args = |extra: &[&str]| {
            let mut a = vec![
                "backup",
                "--source",
                source.as_str(),
                "--to",
                to.as_str(),
                "--format",
                "archive",
                "--compression",
                "none",
            ];
            a.extend_from_slice(extra);
            a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let first = args(&["--encrypt-recipient", &recipient]);
        ok(
            d,
            &first.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
        );
        let more: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![(
            "orders",
            b"k9999".to_vec(),
            format!("{CANARY}-late").into_bytes(),
        )];
        kv_write(kind, &app, &more, &[("orders", b"k0001")]);
        let second = args(&["--encrypt-identity", &id]);
        ok(
            d,
            &second.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
        );
        assert_eq!(shows(&d.join(&to), CANARY), Vec::<String>::new(), "{kind}");
        let out = d.join(format!("{kind}-out"));
        let target = format!("{kind}:{}", out.display());
        ok(
            d,
            &["restore", &to, "--to", &target, "--encrypt-identity", &id],
            false,
        );
        let diff = differences(&kv_content(kind, &out), &kv_content(kind, &app));
        assert!(diff.is_empty(), "{kind}: {diff:?}");
        let err = fails(d, &["restore", &to, "--to", &format!("{target}-2")], false);
        assert!(err.contains("this backup is encrypted"), "{err}");
    }
}

/// The key file every archive needs is kept twice (`.tidemark-key` and `.tidemark-key.copy`):
/// with a byte flipped in one (inside the CRC32's digits, inside a wrap, or one that breaks the
/// JSON) or the key file deleted, verify reports it with the key and without it (exit 3, naming it),
/// a restore opens the chain with the other and restores exactly (a warning, exit 0), and a
/// backup writes the damaged one again from the intact one, after which verify is clean (a
/// deleted copy is not reported: chains made before copies were kept have none; the next
/// backup makes it).
/// Before copies were kept, one flipped bit lost every archive of the chain. With both
/// damaged, or the key file damaged in a chain that keeps no copy (made before), every
/// command refuses (exit 3), restore without suggesting `--skip-damaged` and leaving no
/// target, as before.
#[test]
fn a_damaged_key_file_is_read_from_its_copy_and_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    let (id, recipient) = identity(d, "id.txt");
    backup(d, "bk", &["--encrypt-recipient", &recipient], false);
    let open = ["--encrypt-identity", id.as_str()];
    let key_file = d.join("bk").join(".tidemark-key");
    let copy = d.join("bk").join(".tidemark-key.copy");
    let good = std::fs::read(&key_file).unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        good,
        "the copy is the key file"
    );
    let text = common::output_text;
    let verify_plain = vec!["verify", "bk"];
    let verify_key = [&["verify", "bk"][..], &open].concat();
    let restore = [
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:out.db",
            "--force",
        ][..],
        &open,
    ]
    .concat();
    let next_backup = [archive_backup("bk", &[]).as_slice(), &open].concat();
    // A byte inside the CRC32's digits, one inside a wrap, one that breaks the JSON.
    let crc_at = good.windows(5).position(|w| w == b"crc32").unwrap() + 9;
    let wrap_at = good.windows(4).position(|w| w == b"YWdl").unwrap() + 20;
    let flipped = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        bad
    };
    for (file, name) in [(&key_file, ".tidemark-key"), (&copy, ".tidemark-key.copy")] {
        for at in [Some(crc_at), Some(wrap_at), Some(good.len() - 3), None] {
            let case = format!("{name}, byte {at:?}");
            match at {
                Some(at) => std::fs::write(file, flipped(at)).unwrap(),
                None => std::fs::remove_file(file).unwrap(),
            }
            // A missing copy is a chain made before copies were kept: not damage.
            let reported = !(file == &copy && at.is_none());
            let want = if reported { 3 } else { 0 };
            for args in [&verify_plain, &verify_key] {
                let out = cmd(d, args, false);
                assert_eq!(
                    out.status.code(),
                    Some(want),
                    "{case}, {args:?}: {}",
                    text(&out)
                );
                assert!(
                    !reported || text(&out).contains(name),
                    "{case}, {args:?}: {}",
                    text(&out)
                );
            }
            let out = cmd(d, &restore, false);
            assert_eq!(out.status.code(), Some(0), "{case}: {}", text(&out));
            assert!(
                !reported || text(&out).contains(name),
                "{case}: the warning names it: {}",
                text(&out)
            );
            assert_same_dump(&dump(&d.join("out.db")), &dump(&d.join("src.db")), &case);
            ok(d, &next_backup, false);
            assert_eq!(
                std::fs::read(&key_file).unwrap(),
                good,
                "{case}: written again"
            );
            assert_eq!(std::fs::read(&copy).unwrap(), good, "{case}: written again");
            ok(d, &verify_key, false);
            ok(d, &verify_plain, false);
        }
    }
    std::fs::remove_file(d.join("out.db")).unwrap();
    // No intact file left: both flipped, or the key file flipped in a chain without a copy.
    for without_copy in [false, true] {
        std::fs::write(&key_file, flipped(wrap_at)).unwrap();
        if without_copy {
            std::fs::remove_file(&copy).unwrap();
        } else {
            std::fs::write(&copy, flipped(crc_at)).unwrap();
        }
        for args in [&verify_plain, &verify_key, &restore, &next_backup] {
            let out = cmd(d, args, false);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{without_copy}, {args:?}: {}",
                text(&out)
            );
            assert!(
                text(&out).contains(".tidemark-key"),
                "{args:?}: {}",
                text(&out)
            );
            assert!(
                !text(&out).contains("--skip-damaged"),
                "{args:?}: {}",
                text(&out)
            );
        }
        assert!(!d.join("out.db").exists());
    }
    // A chain made before copies were kept gets one at its next backup.
    std::fs::write(&key_file, &good).unwrap();
    assert!(!copy.exists());
    ok(d, &next_backup, false);
    assert_eq!(std::fs::read(&copy).unwrap(), good, "a copy made");
    ok(d, &verify_key, false);
}

/// On S3 too the key object is kept twice: with a byte of `.tidemark-key` flipped, or the
/// object deleted, verify reports it (exit 3), a restore opens the chain with the copy and
/// restores exactly, and a backup writes it again, after which verify is clean.
#[cfg(feature = "remote")]
#[test]
fn a_damaged_key_object_is_read_from_its_copy_and_written_again() {
    use conformance_tests::s3::{bucket, http, request};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    let (id, recipient) = identity(d, "id.txt");
    let url = format!("{}/app", bucket("keycopy"));
    backup(d, &url, &["--encrypt-recipient", &recipient], true);
    let open = ["--encrypt-identity", id.as_str()];
    let body = |path: &str| {
        let resp = request("GET", path, b"");
        let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        resp[at..].to_vec()
    };
    let good = body("/keycopy/app/.tidemark-key");
    assert_eq!(body("/keycopy/app/.tidemark-key.copy"), good);
    let wrap_at = good.windows(4).position(|w| w == b"YWdl").unwrap() + 20;
    let mut bad = good.clone();
    bad[wrap_at] ^= 0x04;
    let verify = [&["verify", url.as_str()][..], &open].concat();
    let restore = [
        &[
            "restore",
            "--from",
            url.as_str(),
            "--to",
            "sqlite:out.db",
            "--force",
        ][..],
        &open,
    ]
    .concat();
    let next_backup = [archive_backup(&url, &[]).as_slice(), &open].concat();
    for flip in [true, false] {
        if flip {
            assert_eq!(http("PUT", "/keycopy/app/.tidemark-key", &bad), 200);
        } else {
            assert_eq!(http("DELETE", "/keycopy/app/.tidemark-key", b""), 204);
        }
        let out = cmd(d, &verify, true);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "flip {flip}: {text}");
        assert!(text.contains(".tidemark-key"), "flip {flip}: {text}");
        ok(d, &restore, true);
        assert_same_dump(
            &dump(&d.join("out.db")),
            &dump(&d.join("src.db")),
            "restored with the copy",
        );
        ok(d, &next_backup, true);
        assert_eq!(body("/keycopy/app/.tidemark-key"), good, "written again");
        ok(d, &verify, true);
    }
}

/// A scheduled job opens its chain three times a run (to count the incrementals since the last
/// full, to back up, to prune). With a passphrase each unwrap costs age's scrypt (a second and
/// 512 MiB on a fast machine), so the job unwraps its key once a process: the run that makes
/// the chain never unwraps it, and the next process unwraps it once for its three opens.
#[test]
fn a_job_unwraps_its_chain_key_once_a_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    source(d);
    std::fs::write(d.join("pass"), "correct horse battery\n").unwrap();
    std::fs::write(
        d.join("jobs.toml"),
        "[[job]]\nsource = \"sqlite:src.db\"\nto = \"nightly\"\ninterval = \"1h\"\n\
         compression = \"zstd\"\nfull_every = 3\nencrypt_passphrase_file = \"pass\"\n\
         [job.retention]\nkeep_last = 5\n",
    )
    .unwrap();
    let run = || {
        let out = cmd(d, &["-vv", "run", "--once", "--config", "jobs.toml"], false);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let count = |what: &str| err.lines().filter(|l| l.contains(what)).count();
        (
            count("chain key unwrapped"),
            count("chain key opened from memory"),
            err,
        )
    };
    let (unwrapped, remembered, err) = run();
    assert!(d.join("nightly/.tidemark-key").is_file());
    assert_eq!(
        (unwrapped, remembered),
        (0, 1),
        "the run that made the key:\n{err}"
    );
    let (unwrapped, remembered, err) = run();
    assert_eq!((unwrapped, remembered), (1, 2), "the next process:\n{err}");
    // The chain opens with the passphrase as ever.
    ok(
        d,
        &["verify", "nightly", "--encrypt-passphrase-file", "pass"],
        false,
    );
}
