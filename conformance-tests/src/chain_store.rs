//! The `chain_store` suite: generic tests that every place an archive chain can be kept (a
//! local directory, an object store) must pass through the one [`ChainStore`] interface.
//! Backup, list, verify, restore at every point, prune and locking run through the same code
//! for each; only the fixture knows where the bytes are, so that a test can damage them behind
//! tidemark's back.
//!
//! Records come from the in-memory reference backend; restores are read back from the file
//! they wrote, not through tidemark's view.

use crate::memory::{MemoryFactory, MemoryHarness, MemoryTestStore};
use crate::{Harness, Model, Op, TestStore};
use backup_core::{
    backup_archive_to, compact_chain, compact_recent, prune_chain, restore_chain, verify_chain,
    ArchiveOptions, BackupMode, BackupOptions, CompactOptions, Compression, Error, RestoreOptions,
    RestoreSummary, Retention, RunKind,
};
use backup_core::{ChainItem, ChainStore, RestorePoint};
use std::path::Path;

/// Where a chain is kept, for the suite.
pub trait ChainFixture {
    /// A new, empty chain named `name` (unique within the fixture).
    fn chain(&self, name: &str) -> Box<dyn ChainStore>;
    /// Replaces the bytes of `item`'s archive in `chain` with `bytes`, behind tidemark's back
    /// (a damaged disk or object).
    fn overwrite(&self, chain: &dyn ChainStore, item: &ChainItem, bytes: Vec<u8>);
    /// Deletes `item`'s archive from `chain` behind tidemark's back (everything of it: a
    /// file, or an object and its seal).
    fn delete(&self, chain: &dyn ChainStore, item: &ChainItem);
}

/// Runs every test of the suite against `fixture`.
pub fn run_all(fixture: &dyn ChainFixture) {
    round_trip_at_every_point(fixture);
    prune_keeps_what_is_needed(fixture);
    damage_is_found_and_refused(fixture);
    a_deleted_newest_archive_is_noticed(fixture);
    one_writer_at_a_time(fixture);
    compaction_keeps_every_point(fixture);
    compacting_as_the_chain_grows(fixture);
    a_damaged_compacted_archive_is_gone_around(fixture);
    the_newest_point_reads_only_its_path(fixture);
    a_killed_prune_leaves_no_orphans(fixture);
}

fn options() -> ArchiveOptions {
    ArchiveOptions {
        compression: Compression::Zstd(3),
        buffer_size: 1 << 16,
        threads: 2,
        follow_chain: false,
    }
}

/// A store, the model of what it holds, and the model at each backup.
struct Source {
    _dir: tempfile::TempDir,
    store: MemoryTestStore,
    model: Model,
}

impl Source {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = MemoryHarness.create(&dir.path().join("src"));
        for c in ["alpha", "beta"] {
            store.create_collection(c);
        }
        let mut s = Source {
            _dir: dir,
            store,
            model: Model::new(),
        };
        s.write(0, 300, 0);
        s
    }

    /// Puts keys `from..to` (value depends on `round`) and deletes every seventh of them.
    fn write(&mut self, from: u32, to: u32, round: u32) {
        let mut ops = Vec::new();
        for i in from..to {
            let collection = if i % 2 == 0 { "alpha" } else { "beta" }.to_string();
            let key = format!("k{i:05}").into_bytes();
            if round > 0 && i % 7 == 0 {
                self.model.remove(&(collection.clone(), key.clone()));
                ops.push(Op::Delete { collection, key });
            } else {
                let value = format!(
                    "{{\"i\":{i},\"round\":{round},\"pad\":\"{}\"}}",
                    "x".repeat(40)
                )
                .into_bytes();
                self.model
                    .insert((collection.clone(), key.clone()), value.clone());
                ops.push(Op::Put {
                    collection,
                    key,
                    value,
                });
            }
        }
        self.store.write(&ops);
    }

    fn backup(&self, chain: &dyn ChainStore, state: &Path, mode: BackupMode) -> RunKind {
        let run = BackupOptions {
            mode,
            ..BackupOptions::default()
        };
        backup_archive_to(
            self.store.backend(),
            chain,
            state,
            &run,
            &options(),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("backup to {}: {e}", chain.location().display()))
        .kind
    }
}

fn restore(chain: &dyn ChainStore, at: &RestorePoint, target: &Path) -> Result<(), Error> {
    restore_counting(chain, at, target).map(|_| ())
}

fn restore_counting(
    chain: &dyn ChainStore,
    at: &RestorePoint,
    target: &Path,
) -> Result<RestoreSummary, Error> {
    restore_chain(
        chain,
        at,
        &MemoryFactory,
        target,
        &RestoreOptions::default(),
        &options(),
    )
}

fn restored(target: &Path) -> Model {
    MemoryHarness.read_plain(target).0
}

/// A full archive and two incrementals: the survey lists them in order, verify finds every
/// record intact, and a restore at each archive's checkpoint gives exactly the store as it was
/// then (read back from the restored file, not through tidemark).
pub fn round_trip_at_every_point(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("round-trip");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    let mut models = vec![];
    for round in 0..3u32 {
        if round > 0 {
            src.write(round * 50, 300 + round * 40, round);
        }
        let kind = src.backup(&*chain, state.path(), BackupMode::Auto);
        let want = if round == 0 {
            RunKind::Full
        } else {
            RunKind::Incremental
        };
        assert_eq!(kind, want, "round {round}");
        models.push(src.model.clone());
    }
    let survey = chain.survey().expect("survey");
    assert!(survey.problems.is_empty(), "{:?}", survey.problems);
    assert!(survey.anything);
    let kinds: Vec<RunKind> = survey.items.iter().map(|i| i.manifest.kind).collect();
    assert_eq!(
        kinds,
        [RunKind::Full, RunKind::Incremental, RunKind::Incremental]
    );
    assert_eq!(chain.read_chain().expect("read_chain").len(), 3);
    let report = verify_chain(&*chain).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let held: u64 = survey
        .items
        .iter()
        .flat_map(|i| &i.manifest.collections)
        .map(|c| c.documents)
        .sum();
    assert_eq!(report.records, held);
    for (i, item) in survey.items.iter().enumerate() {
        let target = out.path().join(format!("at-{i}"));
        restore(
            &*chain,
            &RestorePoint::Checkpoint(item.manifest.to.position),
            &target,
        )
        .unwrap_or_else(|e| panic!("restore at archive {i}: {e}"));
        assert!(restored(&target) == models[i], "restore at archive {i}");
    }
    let latest = out.path().join("latest");
    restore(&*chain, &RestorePoint::Latest, &latest).expect("restore latest");
    assert!(restored(&latest) == models[2]);
    // An existing store is never overwritten without --force.
    match restore(&*chain, &RestorePoint::Latest, &latest) {
        Err(Error::TargetNotEmpty { .. }) => {}
        other => panic!("restore over a store: {other:?}"),
    }
}

/// Prune removes a superseded chain (logged first), keeps what the newest needs, and leaves a
/// chain that verifies and restores.
pub fn prune_keeps_what_is_needed(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("prune");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    src.write(0, 100, 1);
    src.backup(&*chain, state.path(), BackupMode::Auto);
    src.write(100, 200, 2);
    assert_eq!(
        src.backup(&*chain, state.path(), BackupMode::Full),
        RunKind::Full
    );
    src.write(200, 300, 3);
    src.backup(&*chain, state.path(), BackupMode::Auto);
    let keep_last = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let dry = prune_chain(&*chain, &keep_last, true).expect("dry run");
    assert_eq!(dry.removed().count(), 2);
    assert_eq!(
        chain.read_chain().expect("list").len(),
        4,
        "a dry run removes nothing"
    );
    let plan = prune_chain(&*chain, &keep_last, false).expect("prune");
    let removed: Vec<u64> = plan.removed().map(|i| i.manifest.sequence).collect();
    assert_eq!(removed, [1, 2]);
    let survey = chain.survey().expect("survey");
    let left: Vec<u64> = survey.items.iter().map(|i| i.manifest.sequence).collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(survey.pruned.iter().copied().collect::<Vec<_>>(), [1, 2]);
    let report = verify_chain(&*chain).expect("verify");
    assert!(
        report.is_ok(),
        "a pruned gap is explained: {:?}",
        report.problems
    );
    let target = out.path().join("after-prune");
    restore(&*chain, &RestorePoint::Latest, &target).expect("restore");
    assert!(restored(&target) == src.model);
    // Pruning again finds nothing to remove.
    let again = prune_chain(&*chain, &keep_last, false).expect("prune again");
    assert_eq!(again.removed().count(), 0);
}

/// A byte changed behind tidemark's back is found by verify, naming the archive, and a restore
/// refuses it without creating the target.
pub fn damage_is_found_and_refused(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("damage");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    let item = chain.read_chain().expect("list").remove(0);
    let archive = chain.open(&item).expect("open");
    let mut bytes = archive
        .read_at(0, archive.size() as usize)
        .expect("read the archive");
    drop(archive);
    // Inside the first data entry's compressed bytes (past its local header).
    let at = 30 + "data/alpha/000001.jsonl".len() + 8;
    bytes[at] ^= 0x55;
    fixture.overwrite(&*chain, &item, bytes);
    let report = verify_chain(&*chain).expect("verify runs");
    assert!(!report.is_ok(), "a flipped byte went unseen");
    let name = item
        .path
        .file_name()
        .expect("a file name")
        .to_string_lossy();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains(&*name)),
        "the problem names the archive: {:?}",
        report.problems
    );
    let target = out.path().join("from-damaged");
    assert!(restore(&*chain, &RestorePoint::Latest, &target).is_err());
    assert!(!target.exists(), "a refused restore leaves no target");
}

/// The newest archive deleted behind tidemark's back (the chain that is left looks whole):
/// verify and restore name it as missing, from the chain head written after it.
pub fn a_deleted_newest_archive_is_noticed(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("deleted-newest");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    src.write(0, 50, 1);
    src.backup(&*chain, state.path(), BackupMode::Auto);
    let newest = chain
        .read_chain()
        .expect("list")
        .pop()
        .expect("two archives");
    fixture.delete(&*chain, &newest);
    assert_eq!(chain.read_chain().expect("list").len(), 1);
    let report = verify_chain(&*chain).expect("verify runs");
    let name = newest.path.file_name().expect("a name").to_string_lossy();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("missing") && p.to_string().contains(&*name)),
        "{:?}",
        report.problems
    );
    let target = out.path().join("without-newest");
    assert!(restore(&*chain, &RestorePoint::Latest, &target).is_err());
    assert!(!target.exists());
}

/// One writer per destination: a second lock fails naming the holder while the first is held,
/// and succeeds once it is released.
pub fn one_writer_at_a_time(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("lock");
    let held = chain.lock("backup").expect("the first lock");
    // Another thread (a local lock is reentrant for the thread that holds it).
    std::thread::scope(|s| {
        s.spawn(|| match chain.lock("prune") {
            Err(Error::Locked { holder, .. }) => {
                let pid = std::process::id().to_string();
                assert!(holder.contains(&pid), "the holder is named: {holder}")
            }
            Err(e) => panic!("a second writer: {e}"),
            Ok(_) => panic!("a second writer got the lock"),
        })
        .join()
        .expect("the second writer's thread");
    });
    drop(held);
    std::thread::scope(|s| {
        s.spawn(|| {
            chain.lock("prune").expect("the lock, once released");
        })
        .join()
        .expect("the thread");
    });
}

/// A chain of a full archive and 17 incrementals (keys rewritten again and again, some
/// deleted, some deleted and written again) compacted with fanout 3: the compacted archives
/// are the blocks the levels call for, the chain verifies, a restore at every point gives the
/// store as it was then while reading fewer archives, a second compaction writes nothing, and
/// retention afterwards removes the covered archives without losing a kept point.
pub fn compaction_keeps_every_point(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("compact");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    let mut models = vec![];
    src.backup(&*chain, state.path(), BackupMode::Auto);
    models.push(src.model.clone());
    for round in 1..18u32 {
        // Overlapping ranges: the same keys change in many archives; in rounds 5 to 7 one key
        // of one collection only (a block whose last archive holds nothing for the other
        // collection must still carry that collection's lines from its earlier archives).
        let from = (round * 37) % 250;
        if (5..=7).contains(&round) {
            src.write(2 * round + 1, 2 * round + 2, round);
        } else {
            src.write(from, from + 40, round);
        }
        assert_eq!(
            src.backup(&*chain, state.path(), BackupMode::Auto),
            RunKind::Incremental
        );
        models.push(src.model.clone());
    }
    let before = restore_counting(&*chain, &RestorePoint::Latest, &out.path().join("before"))
        .expect("restore before compaction");
    assert_eq!(before.archives, 18);
    let compact = CompactOptions {
        fanout: 3,
        archive: options(),
        dry_run: false,
    };
    let mut seen = 0;
    let done = compact_chain(&*chain, &compact, &mut |_| seen += 1).expect("compact");
    let blocks: Vec<(u64, u64)> = done.written.iter().map(|c| (c.first, c.last)).collect();
    // Level 1: 2..3, 4..6, …, 13..15 (never the newest, 18); level 2: 2..9.
    assert_eq!(
        blocks,
        [(2, 3), (4, 6), (7, 9), (10, 12), (13, 15), (2, 9)],
        "{:?}",
        done.skipped
    );
    assert_eq!(seen, blocks.len());
    assert!(done.skipped.is_empty(), "{:?}", done.skipped);
    let report = verify_chain(&*chain).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let survey = chain.survey().expect("survey");
    assert_eq!(survey.items.len(), 18 + blocks.len());
    let mut points: Vec<(u64, u64)> = survey
        .items
        .iter()
        .map(|i| (i.manifest.sequence, i.manifest.to.position))
        .collect();
    points.dedup();
    assert_eq!(points.len(), 18, "every point is still there");
    for (seq, position) in &points {
        let target = out.path().join(format!("at-{seq}"));
        let summary = restore_counting(&*chain, &RestorePoint::Checkpoint(*position), &target)
            .unwrap_or_else(|e| panic!("restore at {seq}: {e}"));
        assert!(
            restored(&target) == models[(*seq - 1) as usize],
            "restore at {seq}"
        );
        // Full + 2..9 + 10..12 + 13..15 + 16 + 17 + 18 at most.
        assert!(
            summary.archives <= 7,
            "{seq}: {} archives",
            summary.archives
        );
    }
    let latest = restore_counting(&*chain, &RestorePoint::Latest, &out.path().join("latest"))
        .expect("restore latest");
    assert_eq!(
        latest.archives, 7,
        "1 + (2..9) + (10..12) + (13..15) + 16 + 17 + 18"
    );
    assert!(restored(&out.path().join("latest")) == src.model);
    let again = compact_chain(&*chain, &compact, &mut |_| {}).expect("compact again");
    assert!(again.written.is_empty(), "nothing new to compact");
    // Retention: the newest 2 points; everything else goes, the covered archives included.
    let keep = Retention {
        keep_last: Some(2),
        ..Retention::default()
    };
    let plan = prune_chain(&*chain, &keep, false).expect("prune");
    let kept: Vec<String> = plan
        .items
        .iter()
        .filter(|i| i.kept())
        .map(|i| format!("{}..{}", i.item.manifest.first(), i.item.manifest.sequence))
        .collect();
    assert_eq!(
        kept,
        ["1..1", "2..9", "10..12", "13..15", "16..16", "17..17", "18..18"]
    );
    let report = verify_chain(&*chain).expect("verify after prune");
    assert!(report.is_ok(), "{:?}", report.problems);
    for seq in [17u64, 18] {
        let (_, position) = points[(seq - 1) as usize];
        let target = out.path().join(format!("kept-{seq}"));
        restore(&*chain, &RestorePoint::Checkpoint(position), &target)
            .unwrap_or_else(|e| panic!("restore at kept point {seq}: {e}"));
        assert!(restored(&target) == models[(seq - 1) as usize]);
    }
    let (_, gone) = points[3]; // sequence 4: covered by 2..9, its own point given up
    assert!(restore(
        &*chain,
        &RestorePoint::Checkpoint(gone),
        &out.path().join("gone")
    )
    .is_err());
    // The chain goes on: a new backup continues the newest archive.
    src.write(0, 30, 99);
    assert_eq!(
        src.backup(&*chain, state.path(), BackupMode::Auto),
        RunKind::Incremental
    );
    let target = out.path().join("after");
    restore(&*chain, &RestorePoint::Latest, &target).expect("restore after a new backup");
    assert!(restored(&target) == src.model);
}

/// A prune killed after it logged its removals but before it deleted them all: what the log
/// names is no part of the chain (verify and restore ignore it, even where its neighbours are
/// gone), and the next prune deletes it.
pub fn a_killed_prune_leaves_no_orphans(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("killed-prune");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    for round in 1..4 {
        src.write(round * 20, round * 20 + 30, round);
        src.backup(&*chain, state.path(), BackupMode::Auto);
    }
    src.backup(&*chain, state.path(), BackupMode::Full);
    let items = chain.read_chain().expect("list");
    assert_eq!(items.len(), 5);
    // Log 1..4 as pruned, delete only 1 and 2 (as a prune killed half-way would).
    let mut log = String::new();
    for item in &items[..4] {
        log.push_str(&format!(
            "{{\"sequence\":{},\"file\":\"{}\",\"pruned_at\":\"2026-12-01T00:00:00Z\"}}\n",
            item.manifest.sequence,
            item.path.file_name().expect("a name").to_string_lossy()
        ));
    }
    chain
        .write_prune_log(log.as_bytes())
        .expect("write the log");
    chain.remove(&[&items[0], &items[1]]).expect("remove two");
    let survey = chain.survey().expect("survey");
    let seqs: Vec<u64> = survey.items.iter().map(|i| i.manifest.sequence).collect();
    assert_eq!(seqs, [5]);
    assert_eq!(survey.leftovers.len(), 2);
    let report = verify_chain(&*chain).expect("verify");
    assert!(
        report.is_ok(),
        "leftovers are not part of the chain: {:?}",
        report.problems
    );
    let target = out.path().join("latest");
    restore(&*chain, &RestorePoint::Latest, &target).expect("restore");
    assert!(restored(&target) == src.model);
    let keep = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let plan = prune_chain(&*chain, &keep, false).expect("prune");
    assert_eq!(plan.leftovers.len(), 2);
    assert_eq!(
        chain.read_chain().expect("list").len(),
        1,
        "the leftovers are gone"
    );
}

/// A live backup compacts as it goes ([`compact_recent`] after each archive, reading only the
/// block that just closed): after 20 archives it has written the same compacted archives a
/// `compact_chain` of the whole chain would, and every point restores exactly.
pub fn compacting_as_the_chain_grows(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("compact-live");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    let compact = CompactOptions {
        fanout: 2,
        archive: options(),
        dry_run: false,
    };
    let mut models = vec![];
    let mut blocks = vec![];
    for round in 0..20u32 {
        if round > 0 {
            let from = (round * 53) % 260;
            src.write(from, from + 30, round);
        }
        src.backup(&*chain, state.path(), BackupMode::Auto);
        models.push(src.model.clone());
        let newest = chain.newest().expect("newest").expect("an archive");
        assert_eq!(newest.manifest.sequence, u64::from(round) + 1);
        let done = compact_recent(&*chain, &compact, newest.manifest.sequence, &mut |_| {})
            .expect("compact as it grows");
        assert!(done.skipped.is_empty(), "{:?}", done.skipped);
        blocks.extend(done.written.iter().map(|c| (c.first, c.last)));
    }
    // Blocks of 2, 4, 8 and 16 sequences that closed before the newest (20), each starting
    // after the full archive (1); a block of one archive is not written.
    let mut want = vec![];
    for size in [2u64, 4, 8, 16] {
        let mut b = 0;
        while (b + 1) * size < 20 {
            let (first, hi) = ((b * size + 1).max(2), (b + 1) * size);
            if first < hi {
                want.push((first, hi));
            }
            b += 1;
        }
    }
    want.sort_by_key(|&(f, l)| (l, std::cmp::Reverse(l - f)));
    blocks.sort_by_key(|&(f, l)| (l, std::cmp::Reverse(l - f)));
    assert_eq!(blocks, want);
    let again = compact_chain(&*chain, &compact, &mut |_| {}).expect("compact");
    assert!(
        again.written.is_empty(),
        "compact_chain finds nothing left: {:?}",
        again.written
    );
    let report = verify_chain(&*chain).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let survey = chain.survey().expect("survey");
    let mut points: Vec<(u64, u64)> = survey
        .items
        .iter()
        .map(|i| (i.manifest.sequence, i.manifest.to.position))
        .collect();
    points.dedup();
    assert_eq!(points.len(), 20);
    for (seq, position) in points {
        let target = out.path().join(format!("at-{seq}"));
        let summary = restore_counting(&*chain, &RestorePoint::Checkpoint(position), &target)
            .unwrap_or_else(|e| panic!("restore at {seq}: {e}"));
        assert!(
            restored(&target) == models[(seq - 1) as usize],
            "restore at {seq}"
        );
        // The full archive, then at most one archive per level (fanout 2) and the newest.
        assert!(
            summary.archives <= 7,
            "{seq}: {} archives",
            summary.archives
        );
    }
}

/// A byte flipped in a compacted archive: verify names it; a restore goes around it through
/// the archives it covers and still gives exactly the store as it was, saying what it avoided;
/// with one of those damaged too, there is no way around and the restore refuses, creating
/// nothing.
pub fn a_damaged_compacted_archive_is_gone_around(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("compact-damaged");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    for round in 1..10u32 {
        src.write(round * 17, round * 17 + 40, round);
        src.backup(&*chain, state.path(), BackupMode::Auto);
    }
    let compact = CompactOptions {
        fanout: 3,
        archive: options(),
        dry_run: false,
    };
    compact_chain(&*chain, &compact, &mut |_| {}).expect("compact");
    let flip = |item: &ChainItem| {
        let archive = chain.open(item).expect("open");
        let mut bytes = archive
            .read_at(0, archive.size() as usize)
            .expect("read the archive");
        drop(archive);
        bytes[30 + "data/alpha/000001.jsonl".len() + 8] ^= 0x55;
        fixture.overwrite(&*chain, item, bytes);
    };
    let items = chain.read_chain().expect("list");
    let find = |first: u64, last: u64| {
        items
            .iter()
            .find(|i| i.manifest.first() == first && i.manifest.sequence == last)
            .unwrap_or_else(|| panic!("archive {first}..{last}"))
    };
    let big = find(2, 9);
    flip(big);
    let name = big.path.file_name().expect("a name").to_string_lossy();
    let report = verify_chain(&*chain).expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains(&*name)),
        "{:?}",
        report.problems
    );
    let target = out.path().join("around");
    let summary = restore_counting(&*chain, &RestorePoint::Latest, &target)
        .expect("a restore around the damaged archive");
    assert!(restored(&target) == src.model);
    assert_eq!(summary.avoided.len(), 1, "{:?}", summary.avoided);
    assert!(summary.avoided[0].contains(&*name), "{:?}", summary.avoided);
    // 1 + (2..3) + (4..6) + (7..9) + 10 once 2..9 is out of the way.
    assert_eq!(summary.archives, 5);
    // Damage under it too (4..6 and the archive 5 it covers): no way around.
    flip(find(4, 6));
    flip(find(5, 5));
    let target = out.path().join("no-way");
    assert!(restore(&*chain, &RestorePoint::Latest, &target).is_err());
    assert!(!target.exists(), "a refused restore leaves no target");
}

/// A restore of the newest point reads only the archives on its path: an archive of an older
/// segment (before the newest full archive) turned to garbage does not stop it, while verify
/// names it and a restore at a point that needs it refuses.
pub fn the_newest_point_reads_only_its_path(fixture: &dyn ChainFixture) {
    let chain = fixture.chain("newest-path");
    let state = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut src = Source::new();
    src.backup(&*chain, state.path(), BackupMode::Auto);
    src.write(0, 60, 1);
    src.backup(&*chain, state.path(), BackupMode::Auto);
    src.write(60, 120, 2);
    src.backup(&*chain, state.path(), BackupMode::Full);
    src.write(120, 180, 3);
    src.backup(&*chain, state.path(), BackupMode::Auto);
    let items = chain.read_chain().expect("list");
    let old = items[1].clone(); // the first segment's incremental
    let old_point = old.manifest.to.position;
    fixture.overwrite(&*chain, &old, vec![0x5a; old.size as usize]);
    let report = verify_chain(&*chain).expect("verify runs");
    let name = old.path.file_name().expect("a name").to_string_lossy();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains(&*name)),
        "{:?}",
        report.problems
    );
    let target = out.path().join("newest");
    let summary = restore_counting(&*chain, &RestorePoint::Latest, &target)
        .expect("the newest point does not need the damaged archive");
    assert_eq!(summary.archives, 2);
    assert!(restored(&target) == src.model);
    let target = out.path().join("old");
    assert!(restore(&*chain, &RestorePoint::Checkpoint(old_point), &target).is_err());
    assert!(!target.exists());
}
