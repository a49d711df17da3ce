//! What a restore writes like the source: the table `format_version` and each column family's
//! compression, read from the source's `OPTIONS` file.

use crate::view::numbered_files;
use rocksdb::{DBCompressionType, Options};
use std::collections::BTreeMap;
use std::path::Path;

/// The block-based table `format_version` a restore writes when the source's is unknown (a
/// backup of another store, or of a database without an OPTIONS file): version 4 is read by
/// RocksDB 5.16 and every later release.
pub const DEFAULT_FORMAT_VERSION: i32 = 4;

/// The newest table `format_version` this build of RocksDB writes.
pub const MAX_FORMAT_VERSION: i32 = 7;

/// Options whose block-based tables use `format_version`.
fn table_options(format_version: i32) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_format_version(format_version);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts
}

/// The compression types tidemark records and writes, by the names RocksDB's OPTIONS files
/// (and `SetOptions`) give them.
const COMPRESSIONS: [(&str, DBCompressionType); 7] = [
    ("kNoCompression", DBCompressionType::None),
    ("kSnappyCompression", DBCompressionType::Snappy),
    ("kZlibCompression", DBCompressionType::Zlib),
    ("kBZip2Compression", DBCompressionType::Bz2),
    ("kLZ4Compression", DBCompressionType::Lz4),
    ("kLZ4HCCompression", DBCompressionType::Lz4hc),
    ("kZSTD", DBCompressionType::Zstd),
];

/// How a restore target writes: the table `format_version` of every SST file, and for the
/// column families of a RocksDB source, the compression the source gave their files.
pub(crate) struct Layout {
    /// SST files of column families the source said nothing about (RocksDB's default
    /// compression), and the database's own options.
    pub(crate) default: Options,
    /// Per column family (stored name): the compression's OPTIONS name and the options of its
    /// SST files and of the column family itself.
    pub(crate) by_cf: BTreeMap<String, (&'static str, Options)>,
}

impl Layout {
    /// `compression`: per column family, a compression's OPTIONS name (names tidemark does not
    /// know are left to RocksDB's default).
    pub(crate) fn new(format_version: i32, compression: BTreeMap<String, String>) -> Self {
        let by_cf = compression
            .into_iter()
            .filter_map(|(cf, name)| {
                let (name, t) = COMPRESSIONS.iter().find(|(n, _)| *n == name)?;
                let mut opts = table_options(format_version);
                opts.set_compression_type(*t);
                Some((cf, (*name, opts)))
            })
            .collect();
        Layout {
            default: table_options(format_version),
            by_cf,
        }
    }

    /// The options column family `cf` and its SST files are written with.
    pub(crate) fn options(&self, cf: &str) -> &Options {
        self.by_cf.get(cf).map_or(&self.default, |(_, o)| o)
    }
}

/// What the newest `OPTIONS-*` file of the database at `path` says about the RocksDB that
/// wrote it: its version and the default column family's table `format_version`. Read-only;
/// `None` where the file or a field is missing.
pub fn read_store_format(path: &Path) -> (Option<String>, Option<i32>) {
    read_options(path).map_or((None, None), |o| (o.version, o.format))
}

/// What tidemark reads in an OPTIONS file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StoreOptions {
    /// The RocksDB that wrote it.
    pub(crate) version: Option<String>,
    /// The default column family's table `format_version`.
    pub(crate) format: Option<i32>,
    /// The column families with FIFO compaction, which deletes whole files without a WAL
    /// record.
    pub(crate) fifo: std::collections::BTreeSet<String>,
    /// Per column family, the compression of the files written into its last level (and so of
    /// an ingested file, as `SstFileWriter` chooses it): `bottommost_compression` where set,
    /// else the last of `compression_per_level` where given, else `compression`.
    pub(crate) compression: BTreeMap<String, String>,
}

/// The `OPTIONS-*` files of the database at `path`, read: the version and table format of the
/// newest, and the column families any of them gives FIFO compaction (RocksDB keeps the two
/// newest: a session that opened the database with other options, say to read it, leaves the
/// previous session's, whose FIFO compaction may have dropped files since the last backup).
/// `None` when there is none.
pub(crate) fn read_options(path: &Path) -> Option<StoreOptions> {
    let files = numbered_files(path, "OPTIONS-").ok()?;
    let mut read = files
        .iter()
        .rev()
        .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
        .map(|text| parse_options_file(&text));
    let mut newest = read.next()?;
    for older in read {
        newest.fifo.extend(older.fifo);
    }
    Some(newest)
}

/// The ids of `cfs` that `options` gives FIFO compaction (`None`: no OPTIONS file to tell).
pub(crate) fn fifo_ids(
    options: Option<&StoreOptions>,
    cfs: &[(String, u32)],
) -> Option<std::collections::BTreeSet<u32>> {
    let names = &options?.fifo;
    Some(
        cfs.iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, id)| *id)
            .collect(),
    )
}

/// Parses the fields of [`StoreOptions`] from an OPTIONS file's text.
pub(crate) fn parse_options_file(text: &str) -> StoreOptions {
    let mut options = StoreOptions::default();
    let mut section = String::new();
    // Per column family: `compression`, `bottommost_compression`, `compression_per_level`.
    let mut compression: BTreeMap<String, [Option<String>; 3]> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if section == "[Version]" && k == "rocksdb_version" {
            options.version = Some(v.to_string());
        }
        if section == "[TableOptions/BlockBasedTable \"default\"]" && k == "format_version" {
            options.format = v.parse().ok();
        }
        let cf = section
            .strip_prefix("[CFOptions \"")
            .and_then(|l| l.strip_suffix("\"]"));
        if let (Some(cf), "compaction_style", "kCompactionStyleFIFO") = (cf, k, v) {
            options.fifo.insert(cf.to_string());
        }
        let slot = match k {
            "compression" => 0,
            "bottommost_compression" => 1,
            "compression_per_level" => 2,
            _ => continue,
        };
        if let Some(cf) = cf {
            compression.entry(cf.to_string()).or_default()[slot] = Some(v.to_string());
        }
    }
    for (cf, [all, bottom, per_level]) in compression {
        let last_level = per_level.and_then(|l| {
            let last = l.rsplit(':').next()?.trim().to_string();
            (!last.is_empty()).then_some(last)
        });
        let chosen = bottom
            .filter(|b| b != "kDisableCompressionOption")
            .or(last_level)
            .or(all);
        if let Some(c) = chosen {
            options.compression.insert(cf, c);
        }
    }
    options
}
