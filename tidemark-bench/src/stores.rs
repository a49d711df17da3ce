//! The store side of the backup benchmark: generating a dataset with each store's own batched
//! API (the "bulk load" anchor), changing a share of its records the way an application would
//! (so that change capture sees them), and each store's own backup tool (the anchors).
//!
//! Every function here runs inside a child process of the benchmark, so that its peak RSS is its
//! own; each prints one JSON line on stdout with what it measured.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

/// The store kinds the benchmark knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// SQLite: one table per collection, `(id INTEGER PRIMARY KEY, doc TEXT)`.
    Sqlite,
    /// RocksDB: one column family per collection.
    Rocksdb,
    /// sled: one tree per collection.
    Sled,
}

impl Kind {
    /// The name `tidemark` uses in `KIND:PATH`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Rocksdb => "rocksdb",
            Kind::Sled => "sled",
        }
    }
}

/// The shape of a generated dataset.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Shape {
    /// Number of records.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Approximate bytes of JSON per record value.
    #[arg(long, default_value_t = 1000)]
    pub value_bytes: usize,
    /// Collections (tables, column families, trees) the records are spread across.
    #[arg(long, default_value_t = 4)]
    pub collections: u64,
}

/// A key and its new value (`None` removes), as `TrackedDb::apply_batch` takes them.
type BatchOp = (Vec<u8>, Option<Vec<u8>>);
/// A tree's name and exported items (each `[key, value]`) waiting for sled's `import`.
type Pending = (Vec<u8>, Vec<Vec<Vec<u8>>>);

/// Every key is 12 bytes of decimal digits (SQLite stores it as an INTEGER PRIMARY KEY).
pub const KEY_BYTES: u64 = 12;

const WORDS: [&str; 32] = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "order",
    "customer",
    "shipped",
    "pending",
    "invoice",
    "warehouse",
];

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, fast, well-spread sequence (the data must be the same in every run).
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The JSON value of record `i` in change round `round` (0 = as generated): an order-like
/// document with numbers, tags and words, about `bytes` long. Compresses roughly 3-4x, like
/// real application JSON.
pub fn value(i: u64, round: u64, bytes: usize) -> String {
    let mut r = mix(i.wrapping_mul(31).wrapping_add(round));
    let mut next = || {
        r = mix(r);
        r
    };
    let mut s = format!(
        "{{\"id\":{i},\"rev\":{round},\"customer\":\"user-{}\",\"total\":{}.{:02},\"tags\":[\"{}\",\"{}\"],\"note\":\"",
        next() % 100_000,
        next() % 10_000,
        next() % 100,
        WORDS[(next() % 32) as usize],
        WORDS[(next() % 32) as usize],
    );
    while s.len() + 2 < bytes {
        let v = next();
        s.push_str(WORDS[(v % 32) as usize]);
        s.push(if v % 7 == 0 { '.' } else { ' ' });
        if v % 11 == 0 {
            s.push_str(&(v % 1000).to_string());
            s.push(' ');
        }
    }
    s.push_str("\"}");
    s
}

/// The key of record `i`.
pub fn key(i: u64) -> String {
    format!("{i:012}")
}

/// The collection of record `i`.
pub fn collection(i: u64, shape: &Shape) -> String {
    format!("c{}", i % shape.collections.max(1))
}

/// Whether round `round` (1, 2, ...) changes record `i`: about `percent`% of the records,
/// another draw every round, spread over the whole key range and every collection (a stride
/// such as `i % 100` would put every change of a round into one collection whenever the
/// collection count divides it, and spare the others any work).
pub fn changed(i: u64, round: u64, percent: f64) -> bool {
    let every = (100.0 / percent).round().max(1.0) as u64;
    // splitmix64 of (record, round): a deterministic, well-spread draw.
    let mut z = i ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % every == 0
}

fn report(what: &str, seconds: f64, extra: serde_json::Value) {
    let mut line = serde_json::json!({ "step": what, "seconds": seconds });
    if let (Some(l), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
    println!("{line}");
}

fn rocks_open(path: &Path, create: bool) -> Result<backend_rocksdb::Db> {
    let mut opts = backend_rocksdb::RocksBackend::cli_options();
    opts.create_if_missing(create);
    opts.create_missing_column_families(true);
    let names = if create {
        vec!["default".to_string()]
    } else {
        backend_rocksdb::Db::list_cf(&opts, path)
            .with_context(|| format!("{}: listing column families", path.display()))?
    };
    backend_rocksdb::Db::open_cf(&opts, path, &names)
        .with_context(|| format!("{}: opening RocksDB", path.display()))
}

/// Creates the dataset at `path` with the store's own batched API (WAL off for RocksDB, one
/// transaction for SQLite, batches for sled), syncs it, and reports the load time: the store's
/// own bulk load of exactly the records tidemark later restores.
pub fn generate(kind: Kind, path: &Path, shape: &Shape) -> Result<()> {
    let started = Instant::now();
    let mut bytes = 0u64;
    match kind {
        Kind::Sqlite => {
            let mut conn = rusqlite::Connection::open(path)?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            let tx = conn.transaction()?;
            for c in 0..shape.collections {
                tx.execute_batch(&format!(
                    "CREATE TABLE c{c}(id INTEGER PRIMARY KEY, doc TEXT NOT NULL)"
                ))?;
            }
            {
                let mut inserts = (0..shape.collections)
                    .map(|c| tx.prepare(&format!("INSERT INTO c{c}(id, doc) VALUES (?1, ?2)")))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                for i in 0..shape.records {
                    let v = value(i, 0, shape.value_bytes);
                    bytes += KEY_BYTES + v.len() as u64;
                    inserts[(i % shape.collections) as usize]
                        .execute(rusqlite::params![i as i64, v])?;
                }
            }
            tx.commit()?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Kind::Rocksdb => {
            let db = rocks_open(path, true)?;
            let mut opts = rocksdb::Options::default();
            opts.set_compression_type(rocksdb::DBCompressionType::None);
            for c in 0..shape.collections {
                db.create_cf(format!("c{c}"), &opts)?;
            }
            let mut wo = rocksdb::WriteOptions::default();
            wo.disable_wal(true);
            let mut batch = rocksdb::WriteBatch::default();
            for i in 0..shape.records {
                let cf = db
                    .cf_handle(&collection(i, shape))
                    .context("column family just created")?;
                let v = value(i, 0, shape.value_bytes);
                bytes += KEY_BYTES + v.len() as u64;
                batch.put_cf(&cf, key(i), v);
                if batch.len() >= 1000 {
                    db.write_opt(std::mem::take(&mut batch), &wo)?;
                }
            }
            db.write_opt(batch, &wo)?;
            db.flush()?;
            for c in 0..shape.collections {
                let cf = db.cf_handle(&format!("c{c}")).context("column family")?;
                db.flush_cf(&cf)?;
            }
        }
        Kind::Sled => {
            let db = sled::open(path)?;
            for c in 0..shape.collections {
                let tree = db.open_tree(format!("c{c}"))?;
                let mut batch = sled::Batch::default();
                let mut n = 0;
                let mut i = c;
                while i < shape.records {
                    let v = value(i, 0, shape.value_bytes);
                    bytes += KEY_BYTES + v.len() as u64;
                    batch.insert(key(i).as_bytes(), v.as_bytes());
                    n += 1;
                    if n % 1000 == 0 {
                        tree.apply_batch(std::mem::take(&mut batch))?;
                    }
                    i += shape.collections;
                }
                tree.apply_batch(batch)?;
            }
            db.flush()?;
        }
    }
    let load = started.elapsed().as_secs_f64();
    if kind == Kind::Sqlite {
        // Change capture is installed after the load, as an application would on a running
        // store (its triggers are not part of the bulk load).
        backend_sqlite::SqliteBackend::open(path)?.track()?;
    }
    if kind == Kind::Sled {
        // The changes of `modify` go through `TrackedDb`, which adds its log trees to the
        // database; opening it once here makes the full backup see the same (tracked)
        // database as the incremental, as for an application that writes through it. Each
        // process that opens it starts its log anew, so a CLI incremental is diff-based.
        drop(backend_sled::TrackedDb::open(path)?);
    }
    report(
        "generate",
        load,
        serde_json::json!({ "bytes": bytes, "records": shape.records }),
    );
    Ok(())
}

/// Changes the records of round `round` through the path an application takes (SQLite with
/// change tracking installed, RocksDB with its WAL, sled through tidemark's `TrackedDb`).
pub fn modify(kind: Kind, path: &Path, shape: &Shape, round: u64, percent: f64) -> Result<()> {
    let started = Instant::now();
    let mut n = 0u64;
    let picked = (0..shape.records).filter(|&i| changed(i, round, percent));
    match kind {
        Kind::Sqlite => {
            let mut conn = rusqlite::Connection::open(path)?;
            let tx = conn.transaction()?;
            for i in picked {
                tx.execute(
                    &format!(
                        "UPDATE c{} SET doc = ?1 WHERE id = ?2",
                        i % shape.collections
                    ),
                    rusqlite::params![value(i, round, shape.value_bytes), i as i64],
                )?;
                n += 1;
            }
            tx.commit()?;
        }
        Kind::Rocksdb => {
            let db = rocks_open(path, false)?;
            let mut batch = rocksdb::WriteBatch::default();
            for i in picked {
                let cf = db
                    .cf_handle(&collection(i, shape))
                    .context("the generated column family")?;
                batch.put_cf(&cf, key(i), value(i, round, shape.value_bytes));
                n += 1;
                if batch.len() >= 1000 {
                    db.write(std::mem::take(&mut batch))?;
                }
            }
            db.write(batch)?;
            db.flush_wal(true)?;
        }
        Kind::Sled => {
            let db = backend_sled::TrackedDb::open(path)?;
            let mut ops: Vec<(String, Vec<BatchOp>)> = (0..shape.collections)
                .map(|c| (format!("c{c}"), Vec::new()))
                .collect();
            for i in picked {
                let v = value(i, round, shape.value_bytes).into_bytes();
                ops[(i % shape.collections) as usize]
                    .1
                    .push((key(i).into_bytes(), Some(v)));
                n += 1;
            }
            for (tree, ops) in &ops {
                for chunk in ops.chunks(1000) {
                    db.apply_batch(tree, chunk)?;
                }
            }
            db.flush()?;
        }
    }
    report(
        "modify",
        started.elapsed().as_secs_f64(),
        serde_json::json!({ "records": n }),
    );
    Ok(())
}

/// The store's own backup tool: RocksDB's BackupEngine (flushing first), SQLite's online
/// backup API, sled's `export` written to a file (length-prefixed, fsynced).
pub fn tool_backup(kind: Kind, path: &Path, dest: &Path) -> Result<()> {
    let started = Instant::now();
    match kind {
        Kind::Sqlite => {
            let conn = rusqlite::Connection::open(path)?;
            conn.backup(rusqlite::MAIN_DB, dest, None)?;
            File::open(dest)?.sync_all()?;
        }
        Kind::Rocksdb => {
            let db = rocks_open(path, false)?;
            let env = rocksdb::Env::new()?;
            let opts = rocksdb::backup::BackupEngineOptions::new(dest)?;
            let mut engine = rocksdb::backup::BackupEngine::open(&opts, &env)?;
            engine.create_new_backup_flush(&db, true)?;
        }
        Kind::Sled => {
            let db = sled::open(path)?;
            let mut out = BufWriter::with_capacity(1 << 20, File::create(dest)?);
            let put = |out: &mut BufWriter<File>, b: &[u8]| -> Result<()> {
                out.write_all(&(b.len() as u64).to_le_bytes())?;
                out.write_all(b)?;
                Ok(())
            };
            for (ty, name, items) in db.export() {
                put(&mut out, &ty)?;
                put(&mut out, &name)?;
                for item in items {
                    out.write_all(&(item.len() as u64).to_le_bytes())?;
                    for part in &item {
                        put(&mut out, part)?;
                    }
                }
                out.write_all(&u64::MAX.to_le_bytes())?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
    }
    report(
        "tool-backup",
        started.elapsed().as_secs_f64(),
        serde_json::json!({}),
    );
    Ok(())
}

fn read_u64(r: &mut impl Read) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u64::from_le_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_bytes(r: &mut impl Read) -> Result<Vec<u8>> {
    let n = read_u64(r)?.context("export file ends early")?;
    let mut b = vec![0u8; usize::try_from(n)?];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// The store's own restore: BackupEngine's restore, SQLite's backup API from the copy into a
/// new database, sled's `import` of the exported file into a new database.
pub fn tool_restore(kind: Kind, backup: &Path, target: &Path) -> Result<()> {
    let started = Instant::now();
    match kind {
        Kind::Sqlite => {
            let mut conn = rusqlite::Connection::open(target)?;
            conn.restore(
                rusqlite::MAIN_DB,
                backup,
                None::<fn(rusqlite::backup::Progress)>,
            )?;
            drop(conn);
            File::open(target)?.sync_all()?;
        }
        Kind::Rocksdb => {
            let env = rocksdb::Env::new()?;
            let opts = rocksdb::backup::BackupEngineOptions::new(backup)?;
            let mut engine = rocksdb::backup::BackupEngine::open(&opts, &env)?;
            engine.restore_from_latest_backup(
                target,
                target,
                &rocksdb::backup::RestoreOptions::default(),
            )?;
        }
        Kind::Sled => {
            let db = sled::open(target)?;
            let mut r = BufReader::with_capacity(1 << 20, File::open(backup)?);
            // sled's import takes every collection at once, each as an iterator; the file is
            // read collection by collection and each is imported on its own (bounded memory).
            while let Some(n) = read_u64(&mut r)? {
                let mut ty = vec![0u8; usize::try_from(n)?];
                r.read_exact(&mut ty)?;
                let name = read_bytes(&mut r)?;
                let mut items: Vec<Vec<Vec<u8>>> = Vec::new();
                let mut pending: Vec<Pending> = Vec::new();
                loop {
                    let parts = read_u64(&mut r)?.context("export file ends early")?;
                    if parts == u64::MAX {
                        break;
                    }
                    let mut item = Vec::with_capacity(usize::try_from(parts)?);
                    for _ in 0..parts {
                        item.push(read_bytes(&mut r)?);
                    }
                    items.push(item);
                    if items.len() >= 10_000 {
                        pending.push((name.clone(), std::mem::take(&mut items)));
                        import_chunk(&db, &ty, &mut pending)?;
                    }
                }
                pending.push((name, items));
                import_chunk(&db, &ty, &mut pending)?;
            }
            db.flush()?;
        }
    }
    report(
        "tool-restore",
        started.elapsed().as_secs_f64(),
        serde_json::json!({}),
    );
    Ok(())
}

fn import_chunk(db: &sled::Db, ty: &[u8], pending: &mut Vec<Pending>) -> Result<()> {
    if ty != b"tree" {
        bail!("sled export holds a collection of unknown type");
    }
    let chunk: Vec<_> = pending
        .drain(..)
        .map(|(name, items)| (ty.to_vec(), name, items.into_iter()))
        .collect();
    db.import(chunk);
    Ok(())
}
