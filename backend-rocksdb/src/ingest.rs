//! Files ingested around the WAL.
//!
//! `IngestExternalFile` adds an SST file (written by `SstFileWriter`) to a database without a
//! WAL record. Over keys the database holds, it takes a new sequence number, which leaves a gap
//! in the WAL that [`crate::wal`]'s continuity check sees. Into a key range no data covers,
//! RocksDB gives it sequence number 0: no gap, no record, and an incremental read from the WAL
//! would go on without its keys.
//!
//! Such a file says what it is: `SstFileWriter` writes the table property
//! `rocksdb.external_sst_file.global_seqno` into its properties block, which is never compressed
//! and sits at the end of the file, before the meta-index and the footer. A compaction's output
//! has no such property.
//!
//! So each backup keeps the numbers of the SST files its view holds ([`SstFiles::marks`]), and
//! the next one reads the tail of every file that is new since ([`SstFiles::ingested_since`]).
//! A new file with the property (or one that cannot be read) makes the WAL unusable for that
//! run: the engine compares every record instead (a diff-based incremental) and says why.
//!
//! What this does not see: an ingested file that a compaction merged into another before the
//! next backup. Its keys are then in a compaction's output, which carries no property; a backup
//! taken before the next compaction of that key range catches it.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of a file's end is searched for the property: the properties block is a few KiB
/// (a few dozen properties, names and values), followed only by the meta-index and the footer.
const TAIL_BYTES: u64 = 64 << 10;

/// The property's name as it appears in the properties block. The block stores each name
/// after the part it shares with the previous one (`rocksdb.`, from `rocksdb.deleted.keys`), so
/// the search leaves that part out.
const INGESTED_MARK: &[u8] = b"sst_file.global_seqno";

/// The key of [`SstFiles::marks`]'s list of file numbers.
const MARKS_KEY: &str = "sst_files";

/// One live SST file of a view.
#[derive(Debug, Clone)]
pub(crate) struct SstFile {
    /// Its file number (`000016.sst` → 16), `None` if the name is not a number.
    number: Option<u64>,
    /// Its name in the database directory, without the leading `/`.
    name: String,
    /// The column family it belongs to.
    cf: String,
    /// Its smallest and largest keys.
    keys: (Option<Vec<u8>>, Option<Vec<u8>>),
}

/// The SST files of a view, listed before its snapshot is taken (a file ingested in between is
/// then new to the next backup too, which checks it again: never missed).
#[derive(Debug, Clone, Default)]
pub(crate) struct SstFiles(Vec<SstFile>);

impl SstFiles {
    /// The live SST files of `db`.
    pub(crate) fn of(db: &crate::Db) -> Result<Self, rocksdb::Error> {
        Ok(SstFiles(
            db.live_files()?
                .into_iter()
                .map(|f| {
                    let name = f.name.trim_start_matches('/').to_string();
                    SstFile {
                        number: name.strip_suffix(".sst").and_then(|n| n.parse().ok()),
                        name,
                        cf: f.column_family_name,
                        keys: (f.start_key, f.end_key),
                    }
                })
                .collect(),
        ))
    }

    /// The live SST files a MANIFEST's replay gives (named as RocksDB names them in the
    /// database's directory), for a view that does not open the database.
    pub(crate) fn of_manifest(state: &crate::manifest::Replayed) -> Self {
        SstFiles(
            state
                .files
                .iter()
                .map(|(n, (cf, smallest, largest))| SstFile {
                    number: Some(*n),
                    name: format!("{n:06}.sst"),
                    cf: state.cfs.get(cf).cloned().unwrap_or_default(),
                    keys: (Some(smallest.clone()), Some(largest.clone())),
                })
                .collect(),
        )
    }

    /// What the destination keeps for the next backup: `{"sst_files": "9 16 18"}`, the file
    /// numbers in ascending order in one string (a database of 10,000 files keeps ~60 KB; a
    /// pretty-printed array would take a line each).
    pub(crate) fn marks(&self) -> serde_json::Value {
        let numbers: BTreeSet<u64> = self.0.iter().filter_map(|f| f.number).collect();
        let list: Vec<String> = numbers.iter().map(u64::to_string).collect();
        serde_json::json!({ MARKS_KEY: list.join(" ") })
    }

    /// The numbers of the files.
    pub(crate) fn numbers(&self) -> BTreeSet<u64> {
        self.0.iter().filter_map(|f| f.number).collect()
    }

    /// The file numbers the backup that kept `previous` held (none without marks).
    pub(crate) fn numbers_in(previous: Option<&serde_json::Value>) -> BTreeSet<u64> {
        previous
            .and_then(|m| m.get(MARKS_KEY))
            .and_then(|a| a.as_str())
            .map(|a| a.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Why the files new since the backup that kept `previous` hold changes the WAL does not
    /// have: the first new file (in `dir`) that was ingested, or that cannot be read to tell.
    /// With no marks (a backup by an older tidemark), every file is new.
    pub(crate) fn ingested_since(
        &self,
        dir: &Path,
        previous: Option<&serde_json::Value>,
    ) -> Option<String> {
        // Marks that do not parse are as none: every file is checked.
        let mut known = Self::numbers_in(previous);
        self.first_ingested(dir, &mut known)
    }

    /// The first file not in `known` that was ingested (or cannot be read to tell), as a
    /// reason; the new files that were not ingested join `known`, so they are read once.
    pub(crate) fn first_ingested(&self, dir: &Path, known: &mut BTreeSet<u64>) -> Option<String> {
        for f in &self.0 {
            if f.number.is_some_and(|n| known.contains(&n)) {
                continue;
            }
            let path = dir.join(&f.name);
            let why = match is_ingested(&path) {
                Ok(false) => {
                    known.extend(f.number);
                    continue;
                }
                Ok(true) => "was ingested with IngestExternalFile".to_string(),
                Err(e) => format!(
                    "is new since the previous backup and could not be read to tell whether \
                     it was ingested ({e})"
                ),
            };
            return Some(format!(
                "SST file {} (column family `{}`, keys {} … {}) {why}; keys ingested where no \
                 data overlapped them get sequence number 0 and no WAL record",
                path.display(),
                f.cf,
                shown(f.keys.0.as_deref()),
                shown(f.keys.1.as_deref()),
            ));
        }
        None
    }
}

/// Whether the SST file at `path` was written by `SstFileWriter` (and so ingested): its tail
/// holds the external-file property.
fn is_ingested(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    f.read_to_end(&mut tail)?;
    Ok(tail
        .windows(INGESTED_MARK.len())
        .any(|w| w == INGESTED_MARK))
}

/// A key for a message: as text where it is printable ASCII, else as hex.
fn shown(key: Option<&[u8]>) -> String {
    match key {
        None => "?".into(),
        Some(k) if k.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => {
            format!("`{}`", String::from_utf8_lossy(k))
        }
        Some(k) => format!(
            "0x{}",
            k.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_as_text_or_hex() {
        assert_eq!(shown(Some(b"z500000")), "`z500000`");
        assert_eq!(shown(Some(&[0, 1, 0xff])), "0x0001ff");
        assert_eq!(shown(None), "?");
    }

    fn file(number: u64) -> SstFile {
        SstFile {
            number: Some(number),
            name: format!("{number:06}.sst"),
            cf: "default".into(),
            keys: (Some(b"a".to_vec()), Some(b"b".to_vec())),
        }
    }

    #[test]
    fn only_files_new_since_the_marks_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let then = SstFiles(vec![file(7), file(9)]);
        let marks = then.marks();
        assert_eq!(marks, serde_json::json!({ "sst_files": "7 9" }));
        // Neither file exists here: known ones are not read, a new one that cannot be read to
        // tell is reported, as are all of them without marks (or with marks that do not parse).
        assert_eq!(then.ingested_since(dir.path(), Some(&marks)), None);
        let now = SstFiles(vec![file(7), file(9), file(12)]);
        let why = now
            .ingested_since(dir.path(), Some(&marks))
            .expect("a new file");
        assert!(
            why.contains("000012.sst") && why.contains("could not be read"),
            "{why}"
        );
        for marks in [None, Some(serde_json::json!({ "sst_files": [7, 9] }))] {
            let why = then
                .ingested_since(dir.path(), marks.as_ref())
                .expect("unknown");
            assert!(why.contains("000007.sst"), "{why}");
        }
        // A new file that is no ingest is passed over.
        std::fs::write(dir.path().join("000012.sst"), b"a compaction's output").expect("write");
        assert_eq!(now.ingested_since(dir.path(), Some(&marks)), None);
    }

    #[test]
    fn the_property_is_found_only_in_a_files_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let near = dir.path().join("near.sst");
        let mut bytes = vec![0u8; 200_000];
        bytes[199_000..199_000 + INGESTED_MARK.len()].copy_from_slice(INGESTED_MARK);
        std::fs::write(&near, &bytes).expect("write");
        assert!(is_ingested(&near).expect("read"));
        let far = dir.path().join("far.sst");
        let mut bytes = vec![0u8; 200_000];
        bytes[10..10 + INGESTED_MARK.len()].copy_from_slice(INGESTED_MARK);
        std::fs::write(&far, &bytes).expect("write");
        assert!(!is_ingested(&far).expect("read"));
        assert!(is_ingested(&dir.path().join("missing.sst")).is_err());
    }
}
