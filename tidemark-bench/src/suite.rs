//! `tidemark-bench backup`: the backup benchmark. For every store it generates a dataset, then
//! times, in this one run and on the same data: the store's own tools (the anchors), `tar` +
//! `zstd -3` of the store's files, and the `tidemark` binary's full, incremental (after a share
//! of the records changed), verify and restore steps, in folder and archive format. Every step
//! is a child process, so its peak RSS (`ru_maxrss` from `wait4`) is its own.

use crate::stores::{Kind, Shape, KEY_BYTES};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Options of the backup benchmark.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub shape: Shape,
    /// Stores to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [Kind::Sqlite, Kind::Rocksdb, Kind::Sled])]
    pub stores: Vec<Kind>,
    /// Archive codecs to measure, CODEC:LEVEL (the first one also gets the incremental,
    /// verify and restore steps; compare it with tar + zstd -3).
    #[arg(long, value_delimiter = ',', default_values_t = ["zstd:3".to_string(), "deflate:6".to_string(), "none".to_string()])]
    pub codecs: Vec<String>,
    /// Percentage of the records changed before each incremental backup.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// Incremental archives to time, each after its own change of `--change-percent`: the
    /// first before verify and restore, the others after them. The median is reported as
    /// "archive incremental" (one incremental of a 1% change takes tens of milliseconds, and
    /// one sample swung ±15% with the fsync latency of the moment); each is also listed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub incremental_rounds: u64,
    /// Times to run each step a floor's ratio rests on, both sides of it (the bulk load,
    /// `tar | zstd -3`, the first codec's full archive and its restore, and the same two
    /// encrypted), reporting the median (and the largest peak RSS): on a small machine one
    /// sample of an anchor alone moved by a fifth from run to run. Odd numbers give a true
    /// median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Where the stores and backups go (default: a new directory under the system's temp dir;
    /// it needs about 12x the dataset's size free, and two inodes per record).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// The `tidemark` binary (default: the one next to this program).
    #[arg(long)]
    pub tidemark: Option<PathBuf>,
    /// Also write the results here, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the folder format's steps (one file per record: the slowest part of a run).
    #[arg(long)]
    pub no_folder: bool,
    /// Also back up to and restore from an object store: moto's S3 server on loopback
    /// (`pip install 'moto[server]'`), against the same steps on a local directory.
    #[arg(long)]
    pub s3: bool,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One timed incremental archive.
struct IncrementalRound {
    m: Measured,
    written: u64,
    size: u64,
    method: Option<String>,
}

/// What one child process took.
struct Measured {
    /// Wall time from spawn to exit (or the time the child reported for its operation).
    seconds: f64,
    peak_rss_kib: u64,
    stdout: String,
}

/// Waits for `pid` and returns its exit status and peak RSS in KiB.
#[allow(unsafe_code)]
fn wait4(pid: u32) -> Result<(i32, u64)> {
    let pid = libc::pid_t::try_from(pid)?;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child and has not been waited for; both pointers are valid
        // for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

fn run(what: &str, cmd: &mut Command) -> Result<Measured> {
    let out = tempfile::NamedTempFile::new()?;
    // Every step starts with no dirty data of earlier steps waiting to be written back (tidemark
    // and tar both sync what they wrote; neither should pay for what came before).
    Command::new("sync").status().context("running sync")?;
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::from(out.reopen()?))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("{what}: starting {cmd:?}"))?;
    let (code, peak_rss_kib) = wait4(child.id())?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = fs::read_to_string(out.path())?;
    if code != 0 {
        bail!("{what}: {cmd:?} exited with {code}\n{stdout}");
    }
    // A helper step reports the time of its operation alone (without opening the store).
    let reported = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("seconds").and_then(serde_json::Value::as_f64));
    Ok(Measured {
        seconds: reported.unwrap_or(seconds),
        peak_rss_kib,
        stdout,
    })
}

/// `once(i)` for i in `0..n`: the median of their seconds (the upper one for an even `n`), the
/// largest peak RSS, the last run's output.
fn repeated(n: u64, mut once: impl FnMut(u64) -> Result<Measured>) -> Result<Measured> {
    let mut runs = Vec::new();
    for i in 0..n.max(1) {
        runs.push(once(i)?);
    }
    Ok(median(runs))
}

/// [`repeated`] for two steps that take turns (`once` runs both, the second where there is
/// one): each step's median seconds and largest peak RSS.
fn repeated_pair(
    n: u64,
    mut once: impl FnMut(u64) -> Result<(Measured, Option<Measured>)>,
) -> Result<(Measured, Option<Measured>)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..n.max(1) {
        let (x, y) = once(i)?;
        a.push(x);
        b.extend(y);
    }
    Ok((median(a), (!b.is_empty()).then(|| median(b))))
}

/// The median seconds of `runs` (at least one), their largest peak RSS and the last one's output.
fn median(mut runs: Vec<Measured>) -> Measured {
    let mut secs: Vec<f64> = runs.iter().map(|m| m.seconds).collect();
    secs.sort_by(f64::total_cmp);
    let seconds = secs[secs.len() / 2];
    let peak_rss_kib = runs.iter().map(|m| m.peak_rss_kib).max().unwrap_or(0);
    let stdout = runs.pop().map(|m| m.stdout).unwrap_or_default();
    Measured {
        seconds,
        peak_rss_kib,
        stdout,
    }
}

/// Apparent size of a file or of everything under a directory.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// Size of the archives in a chain directory (not its key state).
fn archives_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".zip"))
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn remove(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// One measured step.
#[derive(serde::Serialize, Clone)]
struct Row {
    store: String,
    step: String,
    seconds: f64,
    /// Logical bytes (keys + values) the step handled.
    bytes: u64,
    records: u64,
    peak_rss_kib: u64,
    /// Size of what the step wrote (backup, archive), when it writes one.
    output_bytes: Option<u64>,
    /// How tidemark took an incremental (change log or diff), from its summary line.
    method: Option<String>,
}

impl Row {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e6
    }
    fn rps(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

struct Bench<'a> {
    args: &'a SuiteArgs,
    me: PathBuf,
    tidemark: PathBuf,
    work: PathBuf,
    rows: Vec<Row>,
}

fn method_of(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let rest = l.strip_prefix("Backup (")?;
        Some(rest.split(')').next()?.to_string())
    })
}

fn written_of(stdout: &str) -> Option<u64> {
    // "Backup (...) of SRC to DIR: N records written, ..."
    stdout.lines().find_map(|l| {
        let before = &l[..l.find(" records written")?];
        before.rsplit(' ').next()?.parse().ok()
    })
}

impl Bench<'_> {
    fn helper(&self, what: &str, kind: Kind, args: &[&str]) -> Result<Measured> {
        let s = &self.args.shape;
        run(
            what,
            Command::new(&self.me)
                .arg(what)
                .args(["--kind", kind.name()])
                .args(["--records", &s.records.to_string()])
                .args(["--value-bytes", &s.value_bytes.to_string()])
                .args(["--collections", &s.collections.to_string()])
                .args(args),
        )
    }

    fn tidemark(&self, what: &str, args: &[&str]) -> Result<Measured> {
        run(what, Command::new(&self.tidemark).args(args))
    }

    /// `tidemark` against the bench's S3 server.
    fn tidemark_s3(&self, what: &str, args: &[&str]) -> Result<Measured> {
        let mut cmd = Command::new(&self.tidemark);
        cmd.args(args)
            .envs(conformance_tests::s3::env())
            .env("XDG_CACHE_HOME", self.work.join("s3-cache"));
        run(what, &mut cmd)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        kind: Kind,
        step: &str,
        m: &Measured,
        bytes: u64,
        records: u64,
        output: Option<u64>,
        method: Option<String>,
    ) {
        let row = Row {
            store: kind.name().into(),
            step: step.into(),
            seconds: m.seconds,
            bytes,
            records,
            peak_rss_kib: m.peak_rss_kib,
            output_bytes: output,
            method,
        };
        eprintln!(
            "  {:<8} {:<28} {:>8} s {:>8.1} MB/s {:>7.0} MiB RSS{}",
            row.store,
            row.step,
            seconds(row.seconds),
            row.mbps(),
            row.peak_rss_kib as f64 / 1024.0,
            row.method
                .as_deref()
                .map(|m| format!("  ({m})"))
                .unwrap_or_default()
        );
        self.rows.push(row);
    }

    fn store(&mut self, kind: Kind, work: &Path) -> Result<()> {
        let shape = self.args.shape;
        let dir = work.join(kind.name());
        remove(&dir)?;
        fs::create_dir_all(&dir)?;
        let store = dir.join(if kind == Kind::Sqlite {
            "store.db"
        } else {
            "store"
        });
        let src = format!("{}:{}", kind.name(), store.display());
        let s = store.to_string_lossy().into_owned();

        let m = repeated(self.args.repeat, |i| {
            if i > 0 {
                // The same load again, into the same place.
                remove(&store)?;
                for suffix in ["-wal", "-shm", "-journal"] {
                    remove(&dir.join(format!("store.db{suffix}")))?;
                }
            }
            self.helper("generate", kind, &["--path", &s])
        })?;
        let gen: serde_json::Value = serde_json::from_str(m.stdout.lines().last().unwrap_or(""))
            .context("generate's report")?;
        let bytes = gen["bytes"].as_u64().context("generate's byte count")?;
        let n = shape.records;
        let store_size = size_of(&store);
        self.push(
            kind,
            "bulk load (store's API)",
            &m,
            bytes,
            n,
            Some(store_size),
            None,
        );

        // tar + zstd -3 of the store's files: the machine's practical limit.
        let tarball = dir.join("store.tar.zst");
        let m = repeated(self.args.repeat, |_| {
            remove(&tarball)?;
            run(
                "tar+zstd",
                Command::new("sh").arg("-c").arg(format!(
                    "tar -cf - -C '{}' '{}' | zstd -3 -q -o '{}' && sync -f '{}'",
                    dir.display(),
                    store
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    tarball.display(),
                    tarball.display()
                )),
            )
        })?;
        self.push(
            kind,
            "tar | zstd -3",
            &m,
            bytes,
            n,
            Some(size_of(&tarball)),
            None,
        );
        remove(&tarball)?;

        let tool = dir.join("tool-backup");
        let m = self.helper(
            "tool-backup",
            kind,
            &["--path", &s, "--dest", &tool.to_string_lossy()],
        )?;
        self.push(
            kind,
            "store's backup tool",
            &m,
            bytes,
            n,
            Some(size_of(&tool)),
            None,
        );
        let restored = dir.join("tool-restored");
        let m = self.helper(
            "tool-restore",
            kind,
            &[
                "--path",
                &tool.to_string_lossy(),
                "--dest",
                &restored.to_string_lossy(),
            ],
        )?;
        self.push(kind, "store's restore tool", &m, bytes, n, None, None);
        remove(&tool)?;
        remove(&restored)?;

        let target = dir.join(if kind == Kind::Sqlite {
            "restored.db"
        } else {
            "restored"
        });
        let to = format!("{}:{}", kind.name(), target.display());
        // Folder format (skipped with --no-folder).
        if !self.args.no_folder {
            let folder = dir.join("folder");
            let f = folder.to_string_lossy().into_owned();
            let m = self.tidemark(
                "backup",
                &["backup", "--source", &src, "--to", &f, "--full"],
            )?;
            self.push(
                kind,
                "folder full",
                &m,
                bytes,
                n,
                Some(size_of(&folder)),
                method_of(&m.stdout),
            );
            self.changes(kind, &s, 1)?;
            let m = self.tidemark("backup", &["backup", "--source", &src, "--to", &f])?;
            let w = written_of(&m.stdout).unwrap_or(0);
            self.push(
                kind,
                "folder incremental",
                &m,
                w * (bytes / n.max(1)),
                w,
                None,
                method_of(&m.stdout),
            );
            let m = self.tidemark("verify", &["verify", &f])?;
            self.push(kind, "folder verify", &m, bytes, n, None, None);
            // A forced full over the backup just taken, after another 1% of changes: it
            // compares every record with its document and rewrites only what differs. Then the
            // worst case: every record changed, so every document is saved for undo and written
            // again.
            for (round, percent, step) in [
                (
                    3,
                    self.args.change_percent,
                    "folder full over the existing backup (1% changed)",
                ),
                (
                    4,
                    100.0,
                    "folder full over the existing backup (all changed)",
                ),
            ] {
                self.changes_by(kind, &s, round, percent)?;
                let m = self.tidemark(
                    "backup",
                    &["backup", "--source", &src, "--to", &f, "--full"],
                )?;
                self.push(kind, step, &m, bytes, n, None, method_of(&m.stdout));
            }
            let m = self.tidemark("restore", &["restore", "--from", &f, "--to", &to])?;
            self.push(kind, "folder restore", &m, bytes, n, None, None);
            remove(&target)?;
            // The folder format is one directory and one file per record: its floor on this file
            // system is creating that many inodes, which `tar -x` of the same tree shows.
            let tree_tar = dir.join("folder.tar");
            let unpacked = dir.join("folder-unpacked");
            fs::create_dir_all(&unpacked)?;
            let status = Command::new("tar")
                .arg("-cf")
                .arg(&tree_tar)
                .arg("-C")
                .arg(&dir)
                .arg("folder")
                .status()?;
            if !status.success() {
                bail!("tar -c of the folder backup failed");
            }
            // One tree at a time on the disk: the backup goes before its copy is unpacked.
            remove(&folder)?;
            let m = run(
                "tar -x",
                Command::new("sh").arg("-c").arg(format!(
                    "tar -xf '{}' -C '{}' && sync -f '{}'",
                    tree_tar.display(),
                    unpacked.display(),
                    unpacked.display()
                )),
            )?;
            self.push(
                kind,
                "tar -x of the folder backup",
                &m,
                bytes,
                n,
                None,
                None,
            );
            remove(&tree_tar)?;
            remove(&unpacked)?;
            remove(&folder)?;
        }

        // Archive chains, one per codec; the first codec also gets the incremental, verify
        // and restore steps.
        let mut chain: Option<PathBuf> = None;
        for codec in &self.args.codecs {
            let (name, level) = codec.split_once(':').unwrap_or((codec, ""));
            let label = codec.replace(':', "-");
            let adir = dir.join(format!("archive-{label}"));
            let a = adir.to_string_lossy().into_owned();
            let mut flags = vec!["--format", "archive", "--compression", name];
            if !level.is_empty() {
                flags.extend(["--level", level]);
            }
            // The first codec's full archive is repeated (into a new destination each time),
            // taking turns with the same full archive encrypted (to an age recipient: a
            // passphrase would add a second of scrypt to each command), so that the encrypted ÷
            // plain ratios compare runs made under the same conditions: run after all the
            // plain ones, the encrypted steps met the writeback of the restores before them.
            let first = chain.is_none();
            let times = if first { self.args.repeat } else { 1 };
            let edir = dir.join(format!("archive-{label}-encrypted"));
            let e = edir.to_string_lossy().into_owned();
            let id = age::x25519::Identity::generate();
            let id_file = dir.join("bench-identity.txt");
            if first {
                use age::secrecy::ExposeSecret;
                std::fs::write(&id_file, id.to_string().expose_secret())?;
            }
            let id_path = id_file.to_string_lossy().into_owned();
            let recipient = id.to_public().to_string();
            let cache = dir
                .join("encrypted-key-state")
                .to_string_lossy()
                .into_owned();
            let (m, sealed) = repeated_pair(times, |_| {
                remove(&adir)?;
                let plain = self.tidemark(
                    "backup",
                    &[
                        &["backup", "--source", &src, "--to", &a, "--full"][..],
                        &flags,
                    ]
                    .concat(),
                )?;
                if !first {
                    return Ok((plain, None));
                }
                remove(&edir)?;
                remove(Path::new(&cache))?;
                let sealed = self.tidemark(
                    "backup",
                    &[
                        &[
                            "backup", "--source", &src, "--to", &e, "--full", "--cache", &cache,
                        ][..],
                        &flags,
                        &["--encrypt-recipient", &recipient],
                    ]
                    .concat(),
                )?;
                Ok((plain, Some(sealed)))
            })?;
            self.push(
                kind,
                &format!("archive full {label}"),
                &m,
                bytes,
                n,
                Some(archives_size(&adir)),
                None,
            );
            // Everything the destination holds (archives, key state, head, marker files).
            let used = Measured {
                seconds: m.seconds,
                peak_rss_kib: 0,
                stdout: String::new(),
            };
            self.push(
                kind,
                &format!("archive destination {label}"),
                &used,
                bytes,
                n,
                Some(size_of(&adir)),
                None,
            );
            if let Some(sealed) = &sealed {
                self.push(
                    kind,
                    &format!("archive full {label} encrypted"),
                    sealed,
                    bytes,
                    n,
                    Some(archives_size(&edir)),
                    None,
                );
            }
            if first {
                let mut rounds = vec![self.incremental_round(kind, &s, 2, &src, &a, &flags)?];
                let m = self.tidemark("verify", &["verify", &a])?;
                self.push(kind, "archive verify", &m, bytes, n, None, None);
                // The plain and the encrypted restore take turns too.
                let (m, sealed) = repeated_pair(self.args.repeat, |_| {
                    remove(&target)?;
                    let plain =
                        self.tidemark("restore", &["restore", "--from", &a, "--to", &to])?;
                    remove(&target)?;
                    let sealed = self.tidemark(
                        "restore",
                        &[
                            "restore",
                            "--from",
                            &e,
                            "--to",
                            &to,
                            "--encrypt-identity",
                            &id_path,
                        ],
                    )?;
                    Ok((plain, Some(sealed)))
                })?;
                self.push(kind, "archive restore", &m, bytes, n, None, None);
                if let Some(sealed) = &sealed {
                    self.push(
                        kind,
                        "archive restore encrypted",
                        sealed,
                        bytes,
                        n,
                        None,
                        None,
                    );
                }
                remove(&target)?;
                remove(&edir)?;
                // Rounds of values of their own (the folder steps use 1, 3 and 4).
                for round in 5..4 + self.args.incremental_rounds {
                    rounds.push(self.incremental_round(kind, &s, round, &src, &a, &flags)?);
                }
                self.push_incrementals(kind, &label, rounds, bytes / n.max(1));
                if self.args.s3 {
                    // The same full archive and restore through an object store.
                    let url = format!(
                        "{}/{}",
                        conformance_tests::s3::bucket(&format!("bench-{}", kind.name())),
                        kind.name()
                    );
                    let m = self.tidemark_s3(
                        "backup",
                        &[
                            &["backup", "--source", &src, "--to", &url, "--full"][..],
                            &flags,
                        ]
                        .concat(),
                    )?;
                    self.push(kind, "archive full to S3", &m, bytes, n, None, None);
                    let m =
                        self.tidemark_s3("restore", &["restore", "--from", &url, "--to", &to])?;
                    self.push(kind, "archive restore from S3", &m, bytes, n, None, None);
                    remove(&target)?;
                }
                chain = Some(adir);
            } else {
                remove(&adir)?;
            }
        }
        remove(&dir)?;
        Ok(())
    }

    /// Changes the store (round `round`) and backs it up as the next incremental archive of
    /// `dir`; the measurement, the records written, the archive's size and the method.
    fn incremental_round(
        &mut self,
        kind: Kind,
        store: &str,
        round: u64,
        src: &str,
        dir: &str,
        flags: &[&str],
    ) -> Result<IncrementalRound> {
        self.changes(kind, store, round)?;
        let before = archives_size(Path::new(dir));
        let m = self.tidemark(
            "backup",
            &[&["backup", "--source", src, "--to", dir][..], flags].concat(),
        )?;
        Ok(IncrementalRound {
            written: written_of(&m.stdout).unwrap_or(0),
            size: archives_size(Path::new(dir)) - before,
            method: method_of(&m.stdout),
            m,
        })
    }

    /// Reports each incremental round, and their median as "archive incremental LABEL".
    fn push_incrementals(
        &mut self,
        kind: Kind,
        label: &str,
        mut rounds: Vec<IncrementalRound>,
        record_bytes: u64,
    ) {
        for (i, r) in rounds.iter().enumerate() {
            let step = format!("archive incremental {label} round {}", i + 1);
            self.push_round(kind, &step, r, record_bytes);
        }
        rounds.sort_by(|a, b| a.m.seconds.total_cmp(&b.m.seconds));
        let median = &rounds[rounds.len() / 2];
        self.push_round(
            kind,
            &format!("archive incremental {label}"),
            median,
            record_bytes,
        );
    }

    /// Reports one incremental round as step `step`.
    fn push_round(&mut self, kind: Kind, step: &str, r: &IncrementalRound, record_bytes: u64) {
        self.push(
            kind,
            step,
            &r.m,
            r.written * record_bytes,
            r.written,
            Some(r.size),
            r.method.clone(),
        );
    }

    fn changes(&mut self, kind: Kind, store: &str, round: u64) -> Result<()> {
        self.changes_by(kind, store, round, self.args.change_percent)
    }

    /// Changes `percent` of the records (round `round` gives values of its own).
    fn changes_by(&mut self, kind: Kind, store: &str, round: u64, percent: f64) -> Result<()> {
        let pct = percent.to_string();
        let m = self.helper(
            "modify",
            kind,
            &[
                "--path",
                store,
                "--round",
                &round.to_string(),
                "--percent",
                &pct,
            ],
        )?;
        let n: serde_json::Value =
            serde_json::from_str(m.stdout.lines().last().unwrap_or("")).context("modify")?;
        eprintln!(
            "  {:<8} changed {} records ({}%) in {:.2} s",
            kind.name(),
            n["records"],
            pct,
            m.seconds
        );
        Ok(())
    }
}

fn find(rows: &[Row], store: &str, step: &str) -> Option<Row> {
    rows.iter()
        .find(|r| r.store == store && r.step == step)
        .cloned()
}

/// Seconds with two decimals, or three under a second (an incremental takes tens of ms).
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.2}")
    }
}

fn print_report(args: &SuiteArgs, rows: &[Row]) {
    let s = &args.shape;
    println!(
        "Backup benchmark: {} records of ~{} B JSON in {} collections per store ({} key bytes each), {}% changed before each incremental",
        s.records, s.value_bytes, s.collections, KEY_BYTES, args.change_percent
    );
    if args.repeat > 1 {
        println!(
            "Bulk load, tar | zstd -3, the first codec's full archive and its restore: the median of {} runs each",
            args.repeat
        );
    }
    println!();
    println!("| store | step | seconds | MB/s | records/s | peak RSS MiB | output MiB | note |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {} |",
            r.store,
            r.step.replace('|', "\\|"),
            seconds(r.seconds),
            r.mbps(),
            r.rps(),
            r.peak_rss_kib as f64 / 1024.0,
            r.output_bytes
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_default(),
            r.method.as_deref().unwrap_or("")
        );
    }
    println!();
    println!("| store | ratio | value | target | |");
    println!("|---|---|---:|---:|---|");
    // The floors depend on the value size: small values (~100 B) have a throughput
    // floor of 0.4, and the disk-use floor is set for 1 KiB values only (the key state is a
    // larger share of a smaller archive).
    let small = s.value_bytes < 500;
    let first = args
        .codecs
        .first()
        .map(|c| c.replace(':', "-"))
        .unwrap_or_default();
    for store in rows
        .iter()
        .map(|r| r.store.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let get = |step: &str| find(rows, &store, step);
        let line = |name: &str, value: Option<f64>, target: Option<(f64, bool)>| {
            if let Some(v) = value {
                let (t, met) = match target {
                    Some((t, higher)) => (
                        format!("{}{t}", if higher { ">= " } else { "<= " }),
                        if (higher && v >= t) || (!higher && v <= t) {
                            "met"
                        } else {
                            "MISSED"
                        },
                    ),
                    None => (String::new(), ""),
                };
                println!("| {store} | {name} | {v:.3} | {t} | {met} |");
            }
        };
        let ratio = |a: Option<Row>, b: Option<Row>| Some(b?.seconds / a?.seconds.max(1e-9));
        let tar = get("tar | zstd -3");
        let arch = get(&format!("archive full {first}"));
        line(
            &format!("archive full {first} throughput / tar+zstd-3"),
            ratio(arch.clone(), tar.clone()),
            Some((if small { 0.4 } else { 0.7 }, true)),
        );
        let size = |r: Option<Row>| r.and_then(|r| r.output_bytes).map(|b| b as f64);
        line(
            &format!("archive full {first} size / tar+zstd-3 size"),
            size(arch.clone())
                .zip(size(tar.clone()))
                .map(|(a, t)| a / t.max(1.0)),
            Some((1.3, false)),
        );
        line(
            &format!("archive destination disk use / archive size ({first})"),
            size(get(&format!("archive destination {first}")))
                .zip(size(arch.clone()))
                .map(|(d, a)| d / a.max(1.0)),
            (!small).then_some((1.1, false)),
        );
        line(
            "folder full throughput / tar+zstd-3",
            ratio(get("folder full"), tar),
            None,
        );
        line(
            "folder full throughput / tar -x of the same tree",
            ratio(get("folder full"), get("tar -x of the folder backup")),
            None,
        );
        line(
            "folder full throughput / store's backup tool",
            ratio(get("folder full"), get("store's backup tool")),
            None,
        );
        line(
            "folder full over an existing backup (1% changed) time / folder full into an empty directory",
            ratio(
                get("folder full"),
                get("folder full over the existing backup (1% changed)"),
            ),
            Some((1.0, false)),
        );
        line(
            "folder full over an existing backup (all changed) time / folder full into an empty directory",
            ratio(
                get("folder full"),
                get("folder full over the existing backup (all changed)"),
            ),
            Some((1.0, false)),
        );
        line(
            "folder incremental time / folder full time",
            ratio(get("folder full"), get("folder incremental")),
            Some((0.05, false)),
        );
        // The floor is for change-log stores. sled keeps a change log only while one
        // process holds its `TrackedDb` open; each process that opens it starts the log anew
        // (writes around it cannot be ruled out), so a CLI incremental of sled is diff-based:
        // it reads every record, and is shown without a target.
        let change_log = store != "sled";
        line(
            &format!(
                "archive incremental time / archive full time ({first}{})",
                if change_log { "" } else { ", diff-based" }
            ),
            ratio(arch, get(&format!("archive incremental {first}"))),
            change_log.then_some((0.05, false)),
        );
        line(
            "folder restore throughput / store's bulk load",
            ratio(get("folder restore"), get("bulk load (store's API)")),
            Some((0.5, true)),
        );
        line(
            "folder restore throughput / store's restore tool",
            ratio(get("folder restore"), get("store's restore tool")),
            None,
        );
        line(
            "archive restore throughput / store's bulk load",
            ratio(get("archive restore"), get("bulk load (store's API)")),
            Some((0.8, true)),
        );
        line(
            "archive restore throughput / store's restore tool",
            ratio(get("archive restore"), get("store's restore tool")),
            None,
        );
        line(
            &format!("archive full {first} encrypted throughput / unencrypted"),
            ratio(
                get(&format!("archive full {first} encrypted")),
                get(&format!("archive full {first}")),
            ),
            Some((0.9, true)),
        );
        line(
            "archive restore encrypted throughput / unencrypted",
            ratio(get("archive restore encrypted"), get("archive restore")),
            Some((0.9, true)),
        );
        if args.s3 {
            line(
                "full backup to S3 / full backup to local dir",
                ratio(
                    get("archive full to S3"),
                    get(&format!("archive full {first}")),
                ),
                Some((0.7, true)),
            );
            line(
                "restore from S3 / restore from local dir",
                ratio(get("archive restore from S3"), get("archive restore")),
                Some((0.7, true)),
            );
            line(
                "restore from S3 peak RSS, MiB",
                get("archive restore from S3").map(|r| r.peak_rss_kib as f64 / 1024.0),
                Some((256.0, false)),
            );
        }
        let peak = rows
            .iter()
            .filter(|r| r.store == store && !r.step.contains("store's") && !r.step.contains("tar"))
            .map(|r| r.peak_rss_kib)
            .max();
        line(
            "tidemark peak RSS, MiB",
            peak.map(|k| k as f64 / 1024.0),
            Some((256.0, false)),
        );
        let archive_peak = rows
            .iter()
            .filter(|r| r.store == store && r.step.starts_with("archive"))
            .map(|r| r.peak_rss_kib)
            .max();
        // The issue sets the floor for SQLite and RocksDB; sled's restore keeps a page cache
        // of its own (RESTORE_CACHE_BYTES) and is shown without a target.
        line(
            "tidemark archive steps peak RSS, MiB",
            archive_peak.map(|k| k as f64 / 1024.0),
            change_log.then_some((128.0, false)),
        );
    }
}

/// Runs the benchmark.
pub fn suite(args: &SuiteArgs) -> Result<()> {
    let me = std::env::current_exe().context("locating this program")?;
    let tidemark = match &args.tidemark {
        Some(t) => t.clone(),
        None => me.with_file_name("tidemark"),
    };
    if !tidemark.is_file() {
        bail!(
            "{}: no tidemark binary (build it: cargo build --release -p tidemark-cli, or pass --tidemark)",
            tidemark.display()
        );
    }
    for tool in ["tar", "zstd"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            bail!("`{tool}` is needed for the tar + zstd anchor (apt-get install {tool})");
        }
    }
    let temp;
    let work = match &args.work {
        Some(w) => {
            fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("tidemark-bench")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut bench = Bench {
        args,
        me,
        tidemark,
        work: work.clone(),
        rows: Vec::new(),
    };
    for &kind in &args.stores {
        eprintln!("{kind}:");
        bench.store(kind, &work)?;
    }
    print_report(args, &bench.rows);
    let json = serde_json::json!({
        "benchmark": "backup",
        "records": args.shape.records,
        "value_bytes": args.shape.value_bytes,
        "collections": args.shape.collections,
        "change_percent": args.change_percent,
        "repeat": args.repeat,
        "rows": bench.rows,
    });
    if let Some(path) = &args.json {
        fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!();
    println!("{json}");
    Ok(())
}
