//! # backend-rocksdb
//!
//! tidemark's [`StorageBackend`] for RocksDB.
//!
//! - Collections are column families (`default` included); records are their keys and values.
//! - The checkpoint is RocksDB's sequence number; the store's identity is `get_db_identity()`.
//! - A view is one RocksDB snapshot across every column family.
//! - Changes since a checkpoint are read from the write-ahead log with `get_updates_since`,
//!   decoded by [`wal`] (never the C API's lossy handler), and checked for continuity: every
//!   batch must start where the previous one ended, and the log must reach the view's sequence.
//!   Merges are resolved by reading the key from the view's snapshot. A range deletion, or a
//!   record type the decoder does not turn into changes, makes the changes unavailable: the
//!   engine then takes a full backup and says why.
//! - A database opened by path ([`RocksBackend::open`]) is read through a secondary instance,
//!   opened on first use. An incremental first tries a WAL-only view
//!   ([`StorageBackend::log_view`]): the WAL files read directly and the MANIFEST replayed, with
//!   the same checks, without opening RocksDB (its open replays every WAL file and opens every
//!   SST file: most of a small incremental's time). What that view cannot give, the engine
//!   takes again through the secondary instance.
//!
//! ```no_run
//! use backend_rocksdb::RocksBackend;
//! use std::sync::Arc;
//!
//! // A service hands its own open database to the backend; nothing is reopened.
//! let db = Arc::new(rocksdb::DB::open_default("/var/lib/app/db")?);
//! let backend = RocksBackend::from_db(db);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Keep WAL files long enough for the next incremental: set `Options::set_wal_ttl_seconds` (or
//! `set_wal_size_limit_mb`) in the application; otherwise RocksDB deletes WAL files as soon as
//! their memtables are flushed and incrementals fall back to full backups.

mod infolog;
mod ingest;
mod logformat;
mod manifest;
mod open;
mod options;
mod restore;
mod view;
pub mod wal;
mod walfiles;

use backup_core::{
    Checkpoint, CollectionName, Error, RestoreSink, Result, StorageBackend, StoreKind, View,
};
use open::all_empty;
use options::{fifo_ids, read_options, Layout};
use restore::RocksRestore;
use rocksdb::{DBWithThreadMode, MultiThreaded};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use view::RocksView;

pub use options::{read_store_format, DEFAULT_FORMAT_VERSION, MAX_FORMAT_VERSION};
pub use restore::RocksFactory;

/// The RocksDB handle type the backend works with (`rocksdb::DB` with the `multi-threaded-cf`
/// feature, which this crate enables).
pub type Db = DBWithThreadMode<MultiThreaded>;

/// How long the CLI keeps archived WAL files when it opens a database itself.
pub const CLI_WAL_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// How much archived WAL the CLI keeps when it opens a database itself.
pub const CLI_WAL_SIZE_LIMIT_MB: u64 = 4096;

/// A RocksDB database as a tidemark store.
pub struct RocksBackend {
    /// The handle: given (`from_db`, `create`), or for a database opened by path a secondary
    /// instance, opened on first use (a WAL-only incremental never needs it: [`walfiles`]).
    db: std::sync::OnceLock<Arc<Db>>,
    path: PathBuf,
    /// Set when the database is read through a secondary instance (every source the CLI opens):
    /// the instance's temporary directory, once it is opened.
    secondary: Option<std::sync::OnceLock<backup_core::ScratchDir>>,
    /// Held while the secondary instance is being opened (one opening at a time).
    opening: std::sync::Mutex<()>,
    /// Restore targets: how new column families and SST files are written (`None` for a
    /// database the backend did not create, which is written through its memtables only).
    layout: Option<Layout>,
    /// What [`StorageBackend::wait_for_changes`] compares with to notice an ingested file,
    /// which moves no sequence number: set by each view.
    watch: std::sync::Mutex<Option<Watch>>,
}

/// The SST files as of the last view (and the files found since that were not ingested), and
/// each column family's super-version number when they were listed (a new number means a new
/// set of files: a flush, a compaction or an ingest).
struct Watch {
    cfs: Vec<String>,
    versions: Vec<Option<u64>>,
    files: std::collections::BTreeSet<u64>,
    /// How far the MANIFEST's edits were read (none: it could not be read).
    manifest: Option<manifest::Position>,
    /// Why the edits read since the view hold changes the WAL does not, for the next view.
    said: Option<String>,
    /// The view's FIFO column families (see [`fifo_ids`]).
    fifo: Option<std::collections::BTreeSet<u32>>,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend")
            .field("path", &self.path)
            .field("secondary", &self.secondary.is_some())
            .finish()
    }
}

fn describe(path: &Path) -> String {
    format!("rocksdb:{}", path.display())
}

/// The column family name of a collection (`docs/FORMAT.md` §2.1): RocksDB's names are C
/// strings, so a name holding NUL (or bytes that are not UTF-8) is escaped.
fn stored(collection: &CollectionName) -> String {
    collection.stored_as(|s| !s.contains('\0'))
}

impl StorageBackend for RocksBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Rocksdb
    }

    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn prepare(&self) -> Result<()> {
        // A secondary instance not yet opened is caught up when it opens.
        if let (Some(_), Some(db)) = (&self.secondary, self.opened()) {
            db.try_catch_up_with_primary()
                .map_err(|e| self.err("catching up with the primary", e))?;
        }
        Ok(())
    }

    fn current_checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint::new(
            self.store_id()?,
            self.handle()?.latest_sequence_number(),
        ))
    }

    fn view(&self) -> Result<Box<dyn View + '_>> {
        let store_id = self.store_id()?;
        let cfs = self.column_families()?;
        // Where the MANIFEST ends, then the files, before the snapshot: an edit written in
        // between is read by the next backup, and its files are this one's (so known then).
        let manifest_at = manifest::current(&self.path).map_err(|e| e.to_string());
        // What waiting for this view found in edits it may no longer read.
        let said = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|w| w.said.take());
        // Listed before the snapshot: a file ingested in between is new to the next backup
        // too, which checks it again.
        let db = self.handle()?;
        let ssts = ingest::SstFiles::of(db).map_err(|e| self.err("listing SST files", e))?;
        // One reading of the OPTIONS file for the view: its FIFO column families, and the
        // RocksDB version and table format the store schema records.
        let options = read_options(&self.path);
        self.watch_from(
            &cfs,
            &ssts,
            manifest_at.as_ref().ok(),
            fifo_ids(options.as_ref(), &cfs),
        );
        let (snapshot, position) = if self.secondary.is_some() {
            (None, db.latest_sequence_number())
        } else {
            let snapshot = db.snapshot();
            let position = snapshot.sequence_number();
            (Some(snapshot), position)
        };
        let checkpoint = Checkpoint::new(store_id, position);
        Ok(Box::new(RocksView {
            backend: self,
            snapshot,
            checkpoint,
            cfs,
            ssts,
            manifest_at,
            manifest_end: None,
            said,
            options,
            verify: None,
            last_batch: None,
            wal_files: None,
        }))
    }

    fn log_view(&self) -> Result<Option<Box<dyn View + '_>>> {
        // Only before the secondary instance is opened: a live backup, or a second run in one
        // process, already holds it.
        if self.secondary.is_none() || self.opened().is_some() {
            return Ok(None);
        }
        match self.wal_only_view() {
            Ok(view) => {
                tracing::debug!(
                    checkpoint = view.checkpoint.position,
                    wal_files = view.wal_files.as_ref().map_or(0, Vec::len),
                    "reading the WAL files directly, without opening RocksDB"
                );
                Ok(Some(Box::new(view)))
            }
            Err(why) => {
                tracing::debug!(%why, "no WAL-only view: reading through RocksDB");
                Ok(None)
            }
        }
    }

    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.prepare()?;
            if self.handle()?.latest_sequence_number() > after.position
                || self.ingested_since_view()?
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn trim_changes(&self, _upto: &Checkpoint) -> Result<()> {
        // RocksDB owns its WAL's lifetime (wal_ttl_seconds / wal_size_limit_mb).
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        let names: Vec<String> = self
            .column_families()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        all_empty(self.handle()?, &self.path, &names)
    }

    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        if self.secondary.is_some() {
            return Err(Error::store(
                self.describe(),
                "cannot restore into a database another process holds open",
            ));
        }
        Ok(Box::new(RocksRestore::new(self, restore::SST_FILE_BYTES)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::file_opening_threads;
    use crate::options::{parse_options_file, StoreOptions};
    use backup_core::{CollectionInfo, Record, StoreSchema, Value};
    use rocksdb::{IteratorMode, Options, SstFileWriter, WriteBatch};

    /// What a WAL-only view reads (the MANIFEST replayed, the WAL files read directly) equals
    /// what a secondary instance opened at the same moment holds, through a primary's life:
    /// writes in the WAL only, a column family created, batches larger than a log block (a
    /// record in fragments), flushes (new WAL files, the old ones kept in `archive/` by a WAL
    /// TTL), a column family dropped, a compaction, a file ingested, and a reopen (a new
    /// MANIFEST). Compared: the checkpoint, the column families with their ids, the live SST
    /// files, and every WAL batch after seven points, byte for byte.
    #[test]
    fn a_wal_only_view_holds_what_a_secondary_instance_holds() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_wal_ttl_seconds(3600);
        let check = |step: &str| {
            let lazy = RocksBackend::open(&path).expect("open");
            let wal = lazy.wal_only_view().expect("a WAL-only view");
            assert!(lazy.opened().is_none(), "{step}: the view opened RocksDB");
            let real = RocksBackend::open(&path).expect("open");
            let db = real.handle().expect("secondary");
            let seq = db.latest_sequence_number();
            assert_eq!(wal.checkpoint.position, seq, "{step}: checkpoint");
            assert_eq!(
                wal.cfs,
                real.column_families().expect("cfs"),
                "{step}: column families"
            );
            assert_eq!(
                wal.ssts.numbers(),
                ingest::SstFiles::of(db).expect("files").numbers(),
                "{step}: SST files"
            );
            for since in [0, 1, seq / 5, seq / 3, seq / 2, seq.saturating_sub(3), seq] {
                let mine: Vec<(u64, Vec<u8>)> = wal
                    .batches_since(since)
                    .expect("files")
                    .map(|b| b.ok().map(|(s, data)| (s, data.to_vec())).expect("a batch"))
                    .collect();
                let theirs: Vec<(u64, Vec<u8>)> = db
                    .get_updates_since(since)
                    .expect("iterator")
                    .map(|b| b.map(|(s, w)| (s, w.data().to_vec())).expect("a batch"))
                    .collect();
                assert_eq!(mine, theirs, "{step}: batches after {since}");
            }
        };
        let big = vec![7u8; 100_000];
        {
            let db = Db::open_cf(&opts, &path, ["default"]).expect("primary");
            for i in 0..50u32 {
                db.put(format!("k{i:03}"), format!("v{i}")).expect("put");
            }
            check("WAL only");
            db.create_cf("b", &opts).expect("cf");
            let b = db.cf_handle("b").expect("b");
            let mut batch = WriteBatch::default();
            for i in 0..20u32 {
                batch.put_cf(&b, format!("b{i}"), &big);
            }
            batch.delete(b"k001");
            db.write(batch).expect("a batch of 2 MB");
            db.put_cf(&b, b"small", b"1").expect("put");
            check("a column family and a fragmented batch");
            db.flush().expect("flush");
            db.flush_cf(&b).expect("flush");
            // Many WAL files (each flush starts one), found by a binary search.
            for round in 0..9u32 {
                for i in 0..20u32 {
                    db.put(format!("r{round}-{i}"), b"v").expect("put");
                }
                db.flush().expect("flush");
            }
            for i in 0..30u32 {
                db.put(format!("after{i}"), &big[..i as usize * 1000])
                    .expect("put");
            }
            check("flushed, then written");
            drop(b);
            db.drop_cf("b").expect("drop");
            db.create_cf("c", &opts).expect("cf");
            db.put_cf(&db.cf_handle("c").expect("c"), b"c1", b"x")
                .expect("put");
            db.compact_range(None::<&[u8]>, None::<&[u8]>);
            check("dropped, created, compacted");
            let sst = d.path().join("ingest.sst");
            let sst_opts = Options::default();
            let mut w = SstFileWriter::create(&sst_opts);
            w.open(&sst).expect("sst");
            w.put(b"zz1", b"i").expect("put");
            w.finish().expect("finish");
            db.ingest_external_file(vec![&sst]).expect("ingest");
            check("ingested");
        }
        let names = Db::list_cf(&opts, &path).expect("cfs");
        let db = Db::open_cf(&opts, &path, &names).expect("reopen");
        db.put(b"reopened", b"1").expect("put");
        check("reopened");
        db.flush_wal(true).expect("sync");
        drop(db);
        check("closed");
    }

    #[test]
    fn sst_files_are_opened_on_one_thread_until_there_are_many() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(file_opening_threads(d.path()), 1, "no SST files");
        assert_eq!(file_opening_threads(&d.path().join("missing")), 1);
        for i in 0..100 {
            std::fs::write(d.path().join(format!("{i:06}.sst")), b"").expect("write");
            std::fs::write(d.path().join(format!("{i:06}.log")), b"").expect("write");
        }
        assert_eq!(file_opening_threads(d.path()), 3, "100 SST files");
        for i in 100..2000 {
            std::fs::write(d.path().join(format!("{i:06}.sst")), b"").expect("write");
        }
        assert_eq!(
            file_opening_threads(d.path()),
            16,
            "RocksDB's default at most"
        );
    }

    #[test]
    fn options_file_fields_are_read() {
        let text = "[Version]\n  rocksdb_version=9.8.4\n  options_file_version=1.1\n\n\
                    [TableOptions/BlockBasedTable \"default\"]\n  block_size=4096\n  format_version=6\n\n\
                    [TableOptions/BlockBasedTable \"other\"]\n  format_version=7\n\n\
                    [CFOptions \"queue\"]\n  compaction_style=kCompactionStyleLevel\n\n\
                    [CFOptions \"events\"]\n  compaction_style=kCompactionStyleFIFO\n\
                    compression=kLZ4Compression\n  bottommost_compression=kDisableCompressionOption\n\n\
                    [CFOptions \"levels\"]\n  compression=kLZ4Compression\n\
                    compression_per_level=kNoCompression:kSnappyCompression:kZSTD\n\n\
                    [CFOptions \"bottom\"]\n  compression=kNoCompression\n\
                    compression_per_level=kNoCompression:kSnappyCompression\n\
                    bottommost_compression=kZlibCompression\n\n\
                    [CFOptions \"empty\"]\n  compression_per_level=\n  compression=kNoCompression\n";
        let o = parse_options_file(text);
        assert_eq!((o.version, o.format), (Some("9.8.4".to_string()), Some(6)));
        assert_eq!(o.fifo, ["events".to_string()].into());
        let compression: Vec<(&str, &str)> = o
            .compression
            .iter()
            .map(|(cf, c)| (cf.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            compression,
            [
                ("bottom", "kZlibCompression"),
                ("empty", "kNoCompression"),
                ("events", "kLZ4Compression"),
                ("levels", "kZSTD"),
            ]
        );
        assert_eq!(parse_options_file("garbage"), StoreOptions::default());
    }

    #[test]
    fn restores_write_the_source_format_or_a_conservative_one() {
        let f = RocksFactory::default();
        let schema = StoreSchema(serde_json::json!({"format_version": 5}));
        assert_eq!(f.format_for(&schema, StoreKind::Rocksdb), 5);
        assert_eq!(
            f.format_for(&schema, StoreKind::Sqlite),
            DEFAULT_FORMAT_VERSION
        );
        let bogus = StoreSchema(serde_json::json!({"format_version": 99}));
        assert_eq!(
            f.format_for(&bogus, StoreKind::Rocksdb),
            DEFAULT_FORMAT_VERSION
        );
        let forced = RocksFactory {
            format_version: Some(6),
        };
        assert_eq!(forced.format_for(&schema, StoreKind::Rocksdb), 6);
        // Compression: the source's where a RocksDB backup recorded it; names this build
        // does not know are left to RocksDB's default.
        let schema = StoreSchema(serde_json::json!({"compression": {
            "a": "kNoCompression", "b": "kXpressCompression", "c": 3
        }}));
        let compression = f.compression_for(&schema, StoreKind::Rocksdb);
        assert_eq!(compression.len(), 2, "{compression:?}");
        assert!(f.compression_for(&schema, StoreKind::Sqlite).is_empty());
        let layout = Layout::new(4, compression);
        assert_eq!(
            layout
                .by_cf
                .iter()
                .map(|(cf, (n, _))| (cf.as_str(), *n))
                .collect::<Vec<_>>(),
            [("a", "kNoCompression")]
        );
    }

    #[test]
    fn a_restore_through_sst_files_keeps_the_last_value_of_every_key() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("db");
        let target = RocksBackend::create(&path).expect("create");
        let name = CollectionName::new("c");
        let put = |k: &str, v: &str| Record {
            key: backup_core::Key(k.as_bytes().to_vec()),
            value: Value::Bytes(v.as_bytes().to_vec()),
        };
        {
            let mut sink = target.restore_sink().expect("sink");
            sink.create_collection(&CollectionInfo::plain("c"), StoreKind::Rocksdb)
                .expect("cf");
            // A long ascending run (one SST file), in two batches.
            let run: Vec<Record> = (0..10_000).map(|i| put(&format!("k{i:05}"), "1")).collect();
            let (a, b) = run.split_at(6_000);
            sink.put_batch(&name, a.to_vec()).expect("run");
            sink.put_batch(&name, b.to_vec()).expect("run");
            assert!(
                path.join("tidemark-restore-000000.sst").is_file(),
                "an ascending run is written as an SST file"
            );
            // Out of order after a long run: the first file is ingested, a second one starts
            // and overlaps it.
            let again: Vec<Record> = (5_000..5_010)
                .map(|i| put(&format!("k{i:05}"), "2"))
                .collect();
            sink.put_batch(&name, again).expect("second run");
            // Out of order after a short run: memtable from here on, and still the newest.
            sink.put_batch(
                &name,
                vec![put("a", "3"), put("k05000", "3"), put("k00001", "3")],
            )
            .expect("memtable");
            sink.finish(&StoreSchema::default(), StoreKind::Rocksdb)
                .expect("finish");
        }
        drop(target);
        // Read back with the plain RocksDB API.
        let db = Db::open_cf(&Options::default(), &path, ["default", "c"]).expect("open");
        let cf = db.cf_handle("c").expect("cf");
        let get = |k: &str| {
            db.get_cf(&cf, k.as_bytes())
                .expect("get")
                .map(|v| String::from_utf8(v).expect("utf8"))
        };
        assert_eq!(get("k00000").as_deref(), Some("1"));
        assert_eq!(get("k00001").as_deref(), Some("3"));
        assert_eq!(get("k05000").as_deref(), Some("3"));
        assert_eq!(get("k05009").as_deref(), Some("2"));
        assert_eq!(get("k05010").as_deref(), Some("1"));
        assert_eq!(get("k09999").as_deref(), Some("1"));
        assert_eq!(get("a").as_deref(), Some("3"));
        assert_eq!(db.iterator_cf(&cf, IteratorMode::Start).count(), 10_001);
        let left: Vec<_> = std::fs::read_dir(&path)
            .expect("dir")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("tidemark-restore")
            })
            .collect();
        assert!(left.is_empty(), "SST files moved into the database");
    }

    /// A long ascending run is cut into SST files of about the restore's file size, each
    /// ingested as it fills: they hold every key once, at the bottom level, without overlapping,
    /// while another collection's run goes on beside it.
    #[test]
    fn a_long_ascending_run_is_cut_into_files_that_do_not_overlap() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("db");
        let target = RocksBackend::create(&path).expect("create");
        // Values that do not compress (xorshift bytes), so that files fill as they would.
        let put = |i: u32| {
            let mut x = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let value = (0..100)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Record {
                key: backup_core::Key(format!("k{i:06}").into_bytes()),
                value: Value::Bytes(value),
            }
        };
        {
            let mut sink = RocksRestore::new(&target, 64 << 10);
            for c in ["a", "b"] {
                sink.create_collection(&CollectionInfo::plain(c), StoreKind::Rocksdb)
                    .expect("cf");
            }
            for start in (0..20_000).step_by(3_000) {
                for c in ["a", "b"] {
                    let batch = (start..(start + 3_000).min(20_000)).map(put).collect();
                    sink.put_batch(&CollectionName::new(c), batch)
                        .expect("batch");
                }
            }
            Box::new(sink)
                .finish(&StoreSchema::default(), StoreKind::Rocksdb)
                .expect("finish");
        }
        drop(target);
        let db = Db::open_cf(&Options::default(), &path, ["default", "a", "b"]).expect("open");
        for c in ["a", "b"] {
            let cf = db.cf_handle(c).expect("cf");
            let keys: Vec<Vec<u8>> = db
                .iterator_cf(&cf, IteratorMode::Start)
                .map(|kv| kv.expect("read").0.to_vec())
                .collect();
            let want: Vec<Vec<u8>> = (0..20_000).map(|i| put(i).key.0).collect();
            assert_eq!(keys, want, "{c}");
            let mut files: Vec<_> = db
                .live_files()
                .expect("live files")
                .into_iter()
                .filter(|f| f.column_family_name == c)
                .collect();
            assert!(files.len() >= 10, "{c}: {} files", files.len());
            files.sort_by(|x, y| x.start_key.cmp(&y.start_key));
            for pair in files.windows(2) {
                assert!(pair[0].end_key < pair[1].start_key, "{c}: files overlap");
            }
            assert!(files.iter().all(|f| f.level > 0), "{c}: a file in L0");
            let entries: u64 = files.iter().map(|f| f.num_entries).sum();
            assert_eq!(entries, 20_000, "{c}: each key in one file");
        }
    }
}
