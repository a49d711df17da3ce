//! RocksDB's info LOG, read for one thing: whether it shows that no file was ingested in the
//! sessions since the previous backup's MANIFEST was created.
//!
//! When the application opened the database again since the previous backup, the MANIFEST
//! that held the edits in between is gone ([`crate::manifest`]), and a file new since that
//! holds keys at sequence number 0 may be a compaction's output into the last level (its keys
//! came through the WAL) or hold the keys of an ingestion (they did not). RocksDB's LOG tells
//! them apart: each session's file names the MANIFEST it opened (`MANIFEST file:
//! MANIFEST-000016`) and each one it creates (`Creating manifest 28`), and every ingestion logs
//! an `"event": "ingest_finished"` line. A LOG that is off, elsewhere (`db_log_dir`), below the
//! INFO level, or rotated away (`keep_log_file_num`) proves nothing: only a complete chain of
//! sessions from the one that created the previous backup's MANIFEST to the one that created
//! the current one, with no ingestion in any of them, counts. RocksDB writes the LOG through a
//! buffer it flushes every 5 seconds and when the database closes, so every session but the
//! last (whose ingestions the current MANIFEST's own edits show) must have closed the database
//! (`Shutdown complete`): a killed one may have lost its last lines. The last one may be open
//! still; if it replaced a MANIFEST of its own (one grown past `max_manifest_file_size`), the
//! lines it wrote before are not proof until it closes.

use std::path::Path;

/// At most this many bytes of LOG files are read for one check: beyond, it proves nothing.
const MAX_BYTES: u64 = 256 << 20;

/// What a session's LOG says when it creates a MANIFEST (`Creating manifest 28`).
const CREATING: &str = "Creating manifest ";

/// Whether the info LOG files in `dir` (`LOG`, `LOG.old.<micros>`) show every session from the
/// one that created MANIFEST number `from` to the one that created number `to`, and no
/// ingestion in any of them. `Err` says why not.
pub(crate) fn no_ingestion_between(dir: &Path, from: u64, to: u64) -> Result<(), String> {
    // The old files in the order they were rotated away (their number is the time), then the
    // current one.
    let mut files = crate::view::numbered_files(dir, "LOG.old.")
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let current = dir.join("LOG");
    if current.exists() {
        files.push((u64::MAX, current));
    }
    // Newest first, back to the file of the session that created MANIFEST `from`: older ones
    // (up to `keep_log_file_num`, 1,000 by default) are not read.
    let mut read = Vec::new();
    let mut total = 0u64;
    for (_, path) in files.iter().rev() {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        total += bytes.len() as u64;
        if total > MAX_BYTES {
            return Err(format!(
                "its LOG files since MANIFEST {from:06} come to more than the {MAX_BYTES} bytes \
                 read"
            ));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let created = text
            .lines()
            .any(|l| number_after(l, CREATING) == Some(from));
        read.push(text);
        if created {
            break;
        }
    }
    let mut chain = Chain::new(from);
    for text in read.iter().rev() {
        for line in text.lines() {
            chain.line(line)?;
        }
    }
    chain.end(to)
}

/// The sessions read so far, in order.
struct Chain {
    /// The previous backup's MANIFEST number.
    from: u64,
    /// The MANIFEST created last, once `from` was seen created.
    last: Option<u64>,
    /// Whether the session read last closed the database (`Shutdown complete`).
    closed: bool,
    /// MANIFESTs the session read last created since it opened the database (or since the
    /// chain began).
    created: u32,
}

impl Chain {
    fn new(from: u64) -> Self {
        Chain {
            from,
            last: None,
            closed: false,
            created: 0,
        }
    }

    /// Takes one LOG line.
    fn line(&mut self, line: &str) -> Result<(), String> {
        if let Some(n) = number_after(line, CREATING) {
            if self.last.is_some() || n == self.from {
                self.last = Some(n);
                self.created += 1;
            }
        } else if let Some(last) = self.last {
            if let Some(n) = number_after(line, "MANIFEST file:  MANIFEST-") {
                // RocksDB writes its LOG through a buffer it flushes every 5 seconds and when
                // the database closes: a session that ended otherwise (killed, crashed) may
                // have lost the lines of its last seconds, an ingestion's among them.
                if !self.closed {
                    return Err(format!(
                        "the session that wrote MANIFEST {last:06} ended without closing the \
                         database (its LOG has no `Shutdown complete`), and may have lost its \
                         last lines"
                    ));
                }
                self.closed = false;
                self.created = 0;
                // A session opened a MANIFEST other than the one created last: a session in
                // between left no LOG here.
                if n != last {
                    return Err(format!(
                        "a session opened MANIFEST {n:06} where the LOG files read last show \
                         {last:06} created: the LOG of a session in between is missing"
                    ));
                }
            } else if line.contains("Shutdown complete") {
                self.closed = true;
            } else if line.contains("\"event\": \"ingest_finished\"") {
                return Err("the LOG shows a file ingested since".into());
            }
        }
        Ok(())
    }

    /// Whether the chain reached the session that created MANIFEST number `to`.
    fn end(self, to: u64) -> Result<(), String> {
        match self.last {
            // The session still open (or killed) replaced its own MANIFEST when it grew too
            // large: its lines before that may still be in its buffer, and its edits before it
            // are gone.
            Some(n) if n == to && self.created > 1 && !self.closed => Err(format!(
                "the session that created MANIFEST {to:06} replaced an earlier one of its own \
                 and has not closed the database: its LOG may still lack its last lines"
            )),
            Some(n) if n == to => Ok(()),
            Some(n) => Err(format!(
                "the LOG files show MANIFEST {n:06} created last, not {to:06}"
            )),
            None => Err(format!(
                "no LOG file shows MANIFEST {:06} created (the LOG is off, elsewhere, below the \
                 INFO level, or rotated away)",
                self.from
            )),
        }
    }
}

/// The decimal number right after `marker` in `line`.
fn number_after(line: &str, marker: &str) -> Option<u64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(from: u64, to: u64, lines: &[&str]) -> Result<(), String> {
        let mut c = Chain::new(from);
        for l in lines {
            c.line(l)?;
        }
        c.end(to)
    }

    const OPEN5: &str =
        "2026/12/04-11:11:10.284650 1 MANIFEST file:  MANIFEST-000005 size: 415 Bytes";
    const CREATE5: &str =
        "2026/12/04-11:11:10.255999 1 [db/version_set.cc:5554] Creating manifest 5";
    const CREATE16: &str =
        "2026/12/04-11:11:10.286156 1 [db/version_set.cc:5554] Creating manifest 16";
    const CLOSED: &str =
        "2026/12/04-11:11:10.263921 1 [db/db_impl/db_impl.cc:709] Shutdown complete";
    const INGEST: &str = "2026/12/04-11:11:10.289398 1 EVENT_LOG_v1 {\"time_micros\": 1, \"event\": \"ingest_finished\", \"files_ingested\": []}";

    #[test]
    fn only_a_whole_chain_without_ingestions_proves_none() {
        assert_eq!(chain(5, 16, &[CREATE5, CLOSED, OPEN5, CREATE16]), Ok(()));
        // The session before ended without closing the database: its last lines may be lost.
        assert!(chain(5, 16, &[CREATE5, OPEN5, CREATE16])
            .expect_err("refused")
            .contains("without closing"));
        // An ingestion before the previous backup's MANIFEST does not count; one after does.
        assert_eq!(
            chain(5, 16, &[INGEST, CREATE5, CLOSED, OPEN5, CREATE16]),
            Ok(())
        );
        assert!(chain(5, 16, &[CREATE5, CLOSED, OPEN5, INGEST, CREATE16])
            .expect_err("refused")
            .contains("ingested"));
        assert!(chain(5, 16, &[CREATE5, CREATE16, INGEST]).is_err());
        // MANIFEST 16 replaced 5 within one session that is still open: not proven (its lines
        // may be in its buffer); once it closed, proven.
        assert!(chain(5, 16, &[CREATE5, CREATE16])
            .expect_err("refused")
            .contains("replaced an earlier one"));
        assert_eq!(chain(5, 16, &[CREATE5, CREATE16, CLOSED]), Ok(()));
        // The session that created it is missing, or one in between, or the last one.
        assert!(chain(5, 16, &[OPEN5, CREATE16])
            .expect_err("refused")
            .contains("no LOG file"));
        let open9 = OPEN5.replace("000005", "000009");
        assert!(chain(5, 16, &[CREATE5, CLOSED, &open9, CREATE16])
            .expect_err("refused")
            .contains("missing"));
        assert!(chain(5, 28, &[CREATE5, CLOSED, OPEN5, CREATE16])
            .expect_err("refused")
            .contains("not 000028"));
        assert_eq!(
            number_after("Creating manifest 28 ", "Creating manifest "),
            Some(28)
        );
        assert_eq!(
            number_after("Creating manifest x", "Creating manifest "),
            None
        );
    }

    #[test]
    fn the_log_files_are_read_newest_first_back_to_the_session_that_created_the_manifest() {
        let dir = tempfile::tempdir().expect("tmp");
        let write = |name: &str, lines: &[&str]| {
            std::fs::write(dir.path().join(name), lines.join("\n")).expect("write")
        };
        let open16 = OPEN5.replace("000005", "000016");
        let create28 = CREATE16.replace("16", "28");
        // An older session's ingestion, before MANIFEST 5 was created: not read.
        write("LOG.old.100", &[INGEST]);
        write("LOG.old.200", &[INGEST, CREATE5, CLOSED]);
        write("LOG.old.300", &[OPEN5, CREATE16, CLOSED]);
        write("LOG", &[&open16, &create28]);
        assert_eq!(no_ingestion_between(dir.path(), 5, 28), Ok(()));
        assert!(no_ingestion_between(dir.path(), 5, 16).is_err());
        // A session's file gone from between.
        std::fs::remove_file(dir.path().join("LOG.old.300")).expect("remove");
        let e = no_ingestion_between(dir.path(), 5, 28).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
        // An ingestion in the last session.
        write("LOG.old.300", &[OPEN5, CREATE16, CLOSED]);
        write("LOG", &[&open16, INGEST, &create28]);
        let e = no_ingestion_between(dir.path(), 5, 28).expect_err("ingested");
        assert!(e.contains("ingested"), "{e}");
    }
}
