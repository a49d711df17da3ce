//! Random damage: single faults (a flipped byte, a truncation, a deleted file) in every file of a
//! folder backup and of an archive chain (documents, attachments, manifests, archives, key
//! indexes, the working mirror, state and marker files). After each, `verify` and `restore` run
//! as a user would, and the restore is compared with the source through the `sqlite3` shell:
//!
//! - a restore never returns wrong data: it fails (leaving no target) or equals the source;
//! - when verify calls a backup intact, restore succeeds and equals the source (damage verify
//!   does not see is damage to something the backup does not need, e.g. the lock file);
//! - nothing panics;
//! - after damage verify does not see, the next backup succeeds and the destination is whole
//!   (damaged working state heals).
//!
//! 400 trials by default; `TIDEMARK_DAMAGE_TRIALS=N` for more, `TIDEMARK_DAMAGE_SEED` to
//! replay. Counts are printed (see docs/RELIABILITY.md).
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, sql, tidemark};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    trials: u64,
    detected: u64,
    harmless: u64,
    refused: u64,
    restored_equal: u64,
    wrong_data: u64,
    verify_intact_restore_refused: u64,
    panics: u64,
    by_fault: BTreeMap<&'static str, u64>,
    harmless_in: BTreeMap<&'static str, u64>,
}

#[test]
fn random_single_faults_are_detected_or_harmless_and_never_restore_wrong_data() {
    let trials: u64 = std::env::var("TIDEMARK_DAMAGE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("TIDEMARK_DAMAGE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_71de_3a2c);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, pic BLOB);
         CREATE TABLE notes(k TEXT PRIMARY KEY, body TEXT) WITHOUT ROWID;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
         INSERT INTO users SELECT i, printf('user %d', i), randomblob(40 + i) FROM n;
         INSERT INTO notes VALUES ('a', 'first'), ('b', 'second');",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    for dest in ["tpl-folder", "tpl-archive"] {
        let format = if dest == "tpl-folder" {
            "folder"
        } else {
            "archive"
        };
        let b = [
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            dest,
            "--format",
            format,
        ];
        ok(&b, d);
        sql(
            &d.join("src.db"),
            "UPDATE users SET name = 'x' WHERE id < 4; DELETE FROM notes WHERE k = 'a';",
        );
        ok(&b, d);
        sql(
            &d.join("src.db"),
            "INSERT OR REPLACE INTO notes VALUES ('c', 'third'); DELETE FROM users WHERE id = 7;",
        );
        ok(&b, d);
        ok(&["verify", dest], d);
    }
    // Both templates were taken from one sequence of states; the folder's last state is the
    // source's state after the folder's third run, which the archive's runs changed again:
    // compare each against a restore of its own undamaged template.
    let mut expected = BTreeMap::new();
    for dest in ["tpl-folder", "tpl-archive"] {
        let target = d.join(format!("{dest}-expected.db"));
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sqlite:{}", target.display()),
            ],
            d,
        );
        expected.insert(dest, dump(&target));
    }
    let mut rng = Rng(seed | 1);
    let mut tally = Tally::default();
    for trial in 0..trials {
        let dest = if trial % 2 == 0 {
            "tpl-folder"
        } else {
            "tpl-archive"
        };
        let work = d.join(format!("w{trial}"));
        copy_dir(&d.join(dest), &work);
        let candidates = files(&work);
        let victim = &candidates[rng.below(candidates.len() as u64) as usize];
        let mut bytes = std::fs::read(victim).unwrap();
        let fault = match rng.below(3) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
                std::fs::write(victim, &bytes).unwrap();
                "flip"
            }
            1 if !bytes.is_empty() => {
                let n = rng.below(bytes.len() as u64) as usize;
                std::fs::write(victim, &bytes[..n]).unwrap();
                // A document that loses only its final newline holds the same JSON: no data
                // was damaged, and verify rightly calls it intact.
                if bytes[n..].iter().all(u8::is_ascii_whitespace) {
                    "truncate (trailing whitespace only)"
                } else {
                    "truncate"
                }
            }
            _ => {
                std::fs::remove_file(victim).unwrap();
                "delete"
            }
        };
        *tally.by_fault.entry(fault).or_default() += 1;
        tally.trials += 1;
        let what = format!(
            "trial {trial} (seed {seed}): {fault} {}",
            victim.strip_prefix(d).unwrap().display()
        );
        let verify = tidemark(&["verify", &work.display().to_string()], d);
        let verr = String::from_utf8_lossy(&verify.stderr).into_owned();
        let target = d.join(format!("r{trial}.db"));
        let restore = tidemark(
            &[
                "restore",
                "--from",
                &work.display().to_string(),
                "--to",
                &format!("sqlite:{}", target.display()),
            ],
            d,
        );
        let rerr = String::from_utf8_lossy(&restore.stderr).into_owned();
        for err in [&verr, &rerr] {
            if err.contains("panicked") {
                tally.panics += 1;
                eprintln!("PANIC {what}: {err}");
            }
        }
        if restore.status.success() {
            if dump(&target) == expected[dest] {
                tally.restored_equal += 1;
            } else {
                tally.wrong_data += 1;
                eprintln!("WRONG DATA {what}");
            }
        } else {
            tally.refused += 1;
            assert!(!target.exists(), "{what}: a refused restore left a target");
        }
        if verify.status.success() {
            if restore.status.success() {
                tally.harmless += 1;
                let rel = victim.strip_prefix(&work).unwrap().display().to_string();
                let place = if fault == "truncate (trailing whitespace only)" {
                    "trailing whitespace only"
                } else if rel.contains(".tidemark-state") {
                    "key state (working state)"
                } else if rel.contains("index/") {
                    "key index (working state)"
                } else {
                    rel.rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                        .leak()
                };
                *tally.harmless_in.entry(place).or_default() += 1;
                // Damaged working state never makes a later run fail: the next backup succeeds
                // (rebuilding what it needs) and the destination is whole.
                let format = if dest == "tpl-folder" {
                    "folder"
                } else {
                    "archive"
                };
                let w = work.display().to_string();
                let out = tidemark(
                    &[
                        "backup",
                        "--source",
                        "sqlite:src.db",
                        "--to",
                        &w,
                        "--format",
                        format,
                    ],
                    d,
                );
                assert!(
                    out.status.success(),
                    "{what}: the next backup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ok(&["verify", &w], d);
                let again = d.join(format!("again{trial}.db"));
                ok(
                    &[
                        "restore",
                        "--from",
                        &w,
                        "--to",
                        &format!("sqlite:{}", again.display()),
                    ],
                    d,
                );
                assert_eq!(
                    dump(&again),
                    dump(&d.join("src.db")),
                    "{what}: after the next backup"
                );
                let _ = std::fs::remove_file(&again);
            } else {
                tally.verify_intact_restore_refused += 1;
                eprintln!("VERIFY INTACT, RESTORE REFUSED {what}: {rerr}");
            }
        } else {
            tally.detected += 1;
        }
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(&target);
    }
    println!("damage trials: {tally:#?}");
    assert_eq!(tally.wrong_data, 0, "{tally:#?}");
    assert_eq!(tally.panics, 0, "{tally:#?}");
    assert_eq!(tally.verify_intact_restore_refused, 0, "{tally:#?}");
    // Damage verify does not report is only ever in files that hold no backup data.
    let not_data = [
        "trailing whitespace only",
        "key state (working state)",
        "key index (working state)",
        ".tidemark-lock",
        "run.lock",
        ".tidemark-format",
        ".tidemark-head",
    ];
    for place in tally.harmless_in.keys() {
        assert!(
            not_data.contains(place),
            "undetected damage in {place}: {tally:#?}"
        );
    }
    assert!(tally.detected > 0, "{tally:#?}");
}
