//! Restoring into RocksDB: keys in ascending order written into SST files and ingested, others
//! through WAL-less batches; and the factory that makes and replaces restore targets.

use crate::open::{all_empty, cf, Cf};
use crate::options::{Layout, DEFAULT_FORMAT_VERSION, MAX_FORMAT_VERSION};
use crate::{describe, stored, Db, RocksBackend};
use backup_core::{
    CollectionInfo, CollectionName, Error, Record, RestoreSink, Result, StorageBackend,
    StoreFactory, StoreKind, StoreSchema, Value,
};
use rocksdb::{IngestExternalFileOptions, Options, SstFileWriter, WriteBatch, WriteOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A run of keys shorter than this that breaks the ascending order switches its collection to
/// the memtable path: a store whose keys come in no byte order (a SQLite source's row ids, say)
/// would otherwise make one tiny SST file per record.
const MIN_SST_RUN: u64 = 4096;

/// Bytes at which a restore's SST file is finished and ingested, and the collection's run of
/// keys goes on in a new one (RocksDB's default target file size). An `SstFileWriter` keeps its
/// file's whole index in memory: four collections of 1M records of 1 KiB, written as one
/// 257 MB file each, held 19 MB of index blocks at once.
pub(crate) const SST_FILE_BYTES: u64 = 64 << 20;

/// How one collection of a restore is being loaded.
enum Load<'a> {
    /// Every key so far ascending: written straight into an SST file (`file`), ingested whole.
    Sst {
        writer: SstFileWriter<'a>,
        file: PathBuf,
        last: Vec<u8>,
        count: u64,
    },
    /// Keys came out of order after a short run: written through the memtables (no WAL).
    Memtable,
}

/// A restore: records that arrive in ascending key order per collection (a scan of RocksDB or
/// sled, the bulk of any archive) are written into SST files with `SstFileWriter` and ingested,
/// which costs one sequential write and a block of memory; anything out of order goes through
/// the memtables. An SST file is ingested as soon as its run ends, before its collection gets
/// any memtable write, so later records always have the higher sequence numbers and win, as
/// they must.
pub(crate) struct RocksRestore<'a> {
    backend: &'a RocksBackend,
    created: Vec<String>,
    loads: BTreeMap<String, Load<'a>>,
    /// SST files written so far (names the next one).
    files: u64,
    /// Bytes at which an SST file is finished and ingested ([`SST_FILE_BYTES`]).
    file_bytes: u64,
}

impl<'a> RocksRestore<'a> {
    /// A restore into `backend`, whose SST files are cut at `file_bytes`.
    pub(crate) fn new(backend: &'a RocksBackend, file_bytes: u64) -> Self {
        RocksRestore {
            backend,
            created: Vec::new(),
            loads: BTreeMap::new(),
            files: 0,
            file_bytes,
        }
    }

    /// Starts an SST file for column family `name`.
    fn start_sst(&mut self, name: &str) -> Result<Option<Load<'a>>> {
        let Some(layout) = self.backend.layout.as_ref() else {
            return Ok(None);
        };
        let opts = layout.options(name);
        let file = self
            .backend
            .path
            .join(format!("tidemark-restore-{:06}.sst", self.files));
        self.files += 1;
        let writer = SstFileWriter::create(opts);
        writer
            .open(&file)
            .map_err(|e| self.backend.err(&format!("creating {}", file.display()), e))?;
        Ok(Some(Load::Sst {
            writer,
            file,
            last: Vec::new(),
            count: 0,
        }))
    }

    /// Ingests `load`'s SST file into column family `name`, if it is writing one.
    fn ingest_load(&self, name: &str, load: Load<'a>) -> Result<()> {
        match load {
            Load::Sst { writer, file, .. } => self.ingest(name, writer, &file),
            Load::Memtable => Ok(()),
        }
    }

    /// Finishes an SST file and ingests it into column family `name` (moving it into the
    /// database).
    fn ingest(&self, name: &str, mut writer: SstFileWriter<'a>, file: &Path) -> Result<()> {
        let db = self.backend.handle()?;
        writer
            .finish()
            .map_err(|e| self.backend.err(&format!("writing {}", file.display()), e))?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let ingested = match cf(db, &self.backend.path, name)? {
            Cf::Default => db.ingest_external_file_opts(&opts, vec![file]),
            Cf::Named(h) => db.ingest_external_file_cf_opts(&h, &opts, vec![file]),
        };
        ingested.map_err(|e| self.backend.err(&format!("ingesting into `{name}`"), e))?;
        // Moved files are hard links; the original name goes.
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", file, e)),
            _ => Ok(()),
        }
    }
}

impl RestoreSink for RocksRestore<'_> {
    fn create_collection(&mut self, info: &CollectionInfo, _source: StoreKind) -> Result<()> {
        let stored = stored(&info.name);
        let name = stored.as_str();
        let db = self.backend.handle()?;
        let layout = self.backend.layout.as_ref();
        if name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && db.cf_handle(name).is_none() {
            let default = Options::default();
            let opts = layout.map_or(&default, |l| l.options(name));
            db.create_cf(name, opts).map_err(|e| {
                self.backend
                    .err(&format!("creating column family `{name}`"), e)
            })?;
        } else if let Some((compression, _)) = layout.and_then(|l| l.by_cf.get(name)) {
            // A column family the new database already has (`default`): its memtables flush
            // with the source's compression too.
            let set = [("compression", *compression)];
            let done = match cf(db, &self.backend.path, name)? {
                Cf::Default => db.set_options(&set),
                Cf::Named(h) => db.set_options_cf(&h, &set),
            };
            done.map_err(|e| {
                self.backend
                    .err(&format!("setting the compression of `{name}`"), e)
            })?;
        }
        self.created.push(name.to_string());
        Ok(())
    }

    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        let name = stored(collection);
        let db = self.backend.handle()?;
        let mut batch = WriteBatch::default();
        let mut load = match self.loads.remove(&name) {
            Some(l) => l,
            None => self.start_sst(&name)?.unwrap_or(Load::Memtable),
        };
        let mut handle = None;
        for record in &records {
            let row_json;
            let value: &[u8] = match &record.value {
                Value::Bytes(v) => v,
                Value::Row(row) => {
                    row_json = backup_core::row_to_json_bytes(row);
                    &row_json
                }
            };
            let key = record.key.as_bytes();
            if let Load::Sst {
                writer,
                file,
                last,
                count,
            } = &mut load
            {
                if *count == 0 || key > last.as_slice() {
                    writer
                        .put(key, value)
                        .map_err(|e| self.backend.err(&format!("writing {}", file.display()), e))?;
                    last.clear();
                    last.extend_from_slice(key);
                    *count += 1;
                    if writer.file_size() < self.file_bytes {
                        continue;
                    }
                    // Full: ingested now, and the run goes on in a new file.
                    self.ingest_load(&name, std::mem::replace(&mut load, Load::Memtable))?;
                    load = self.start_sst(&name)?.unwrap_or(Load::Memtable);
                    continue;
                }
                let long_run = *count >= MIN_SST_RUN;
                self.ingest_load(&name, std::mem::replace(&mut load, Load::Memtable))?;
                if long_run {
                    if let Some(Load::Sst {
                        mut writer,
                        file,
                        mut last,
                        ..
                    }) = self.start_sst(&name)?
                    {
                        writer.put(key, value).map_err(|e| {
                            self.backend.err(&format!("writing {}", file.display()), e)
                        })?;
                        last.extend_from_slice(key);
                        load = Load::Sst {
                            writer,
                            file,
                            last,
                            count: 1,
                        };
                        continue;
                    }
                }
            }
            let h = match &handle {
                Some(h) => h,
                None => handle.insert(cf(db, &self.backend.path, &name)?),
            };
            match h {
                Cf::Default => batch.put(key, value),
                Cf::Named(h) => batch.put_cf(h, key, value),
            }
        }
        self.loads.insert(name, load);
        if batch.is_empty() {
            return Ok(());
        }
        // Bulk load without the WAL; `finish` flushes every column family to SST files.
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        db.write_opt(batch, &opts)
            .map_err(|e| self.backend.err(&format!("writing into `{collection}`"), e))
    }

    fn finish(mut self: Box<Self>, _schema: &StoreSchema, _source: StoreKind) -> Result<()> {
        for (name, load) in std::mem::take(&mut self.loads) {
            self.ingest_load(&name, load)?;
        }
        let db = self.backend.handle()?;
        for name in &self.created {
            let flushed = match cf(db, &self.backend.path, name)? {
                Cf::Default => db.flush(),
                Cf::Named(h) => db.flush_cf(&h),
            };
            flushed.map_err(|e| self.backend.err(&format!("flushing `{name}`"), e))?;
        }
        db.flush_wal(true)
            .map_err(|e| self.backend.err("syncing the WAL", e))
    }
}

/// Makes RocksDB databases at paths (restore targets).
#[derive(Debug, Default, Clone, Copy)]
pub struct RocksFactory {
    /// The table `format_version` to write, overriding the one the backup recorded.
    pub format_version: Option<i32>,
}

impl RocksFactory {
    /// The compression a restore of a backup of `source` with `schema` gives each column
    /// family: the source's, where a RocksDB backup recorded it (by the OPTIONS file's
    /// names). Other column families get RocksDB's default.
    pub fn compression_for(
        &self,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> BTreeMap<String, String> {
        if source != StoreKind::Rocksdb {
            return BTreeMap::new();
        }
        schema
            .0
            .get("compression")
            .and_then(|c| c.as_object())
            .map(|c| {
                c.iter()
                    .filter_map(|(cf, v)| Some((cf.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table `format_version` a restore of a backup of `source` with `schema` writes: the
    /// override, else the source's own (a RocksDB backup records it), else
    /// [`DEFAULT_FORMAT_VERSION`].
    pub fn format_for(&self, schema: &StoreSchema, source: StoreKind) -> i32 {
        if let Some(v) = self.format_version {
            return v;
        }
        if source == StoreKind::Rocksdb {
            if let Some(v) = schema.0.get("format_version").and_then(|v| v.as_i64()) {
                if (2..=MAX_FORMAT_VERSION as i64).contains(&v) {
                    return v as i32;
                }
            }
        }
        DEFAULT_FORMAT_VERSION
    }
}

impl StoreFactory for RocksFactory {
    fn kind(&self) -> StoreKind {
        StoreKind::Rocksdb
    }

    fn holds_data(&self, path: &Path) -> Result<bool> {
        // Read-only: checking a target must not change it.
        backup_core::dir_store_holds_data(path, "CURRENT", "RocksDB", || {
            let err = |e: rocksdb::Error| Error::store_cause(describe(path), "", e);
            let opts = Options::default();
            let names = Db::list_cf(&opts, path).map_err(err)?;
            let db = Db::open_cf_for_read_only(&opts, path, &names, false).map_err(err)?;
            all_empty(&db, path, &names)
        })
    }

    fn check_replaceable(&self, path: &Path) -> Result<()> {
        backup_core::check_dir_store_replaceable(path, "CURRENT", "RocksDB")
    }

    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>> {
        Ok(Box::new(RocksBackend::create_with_format(
            path,
            self.format_version.unwrap_or(DEFAULT_FORMAT_VERSION),
        )?))
    }

    fn create_like(
        &self,
        path: &Path,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> Result<Box<dyn StorageBackend>> {
        let layout = Layout::new(
            self.format_for(schema, source),
            self.compression_for(schema, source),
        );
        Ok(Box::new(RocksBackend::create_with_layout(path, layout)?))
    }
}
