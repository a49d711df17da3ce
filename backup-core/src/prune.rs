//! Retention for archive chains (`tidemark prune`), in restic's spirit: a policy picks the
//! backups to keep (the last N, the newest of each of the last N days or weeks), every kept
//! backup keeps the archives it depends on (its full archive and the incrementals between), and
//! everything else is removed. The chain's newest archive is always kept: the next run
//! continues it.
//!
//! Removed archives are first recorded in `DIR/.tidemark-pruned` (JSON Lines: sequence and file
//! name), made durable, and only then deleted, so that `verify` can tell a pruned gap from a lost
//! archive. A gap in the sequence is valid only when it was pruned and a full archive follows it.

use crate::archive::{ChainItem, ChainStore, LocalChain};
use crate::error::{Error, Result};
use crate::manifest::{now_rfc3339, RunKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The log of pruned archives inside an archive directory.
pub const PRUNED_LOG: &str = ".tidemark-pruned";

/// Which backups to keep. At least one rule must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_last: Option<usize>,
    /// Keep the newest backup of each of the newest N days (UTC) that have backups.
    pub keep_daily: Option<usize>,
    /// Keep the newest backup of each of the newest N ISO weeks (UTC) that have backups.
    pub keep_weekly: Option<usize>,
    /// Keep every backup captured within this many seconds before the newest backup (as
    /// restic's `--keep-within`: relative to the newest backup, not to the clock, so that a
    /// chain that stopped growing is not emptied by time alone). Job configs write it as a
    /// duration (`keep_within = "30d"`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "within")]
    pub keep_within: Option<u64>,
}

impl Retention {
    /// Whether no rule is set (pruning would keep only the newest backup).
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_within.is_none()
    }
}

/// `keep_within` as seconds or a duration text: `90s`, `45m`, `12h`, `30d`, `2w`.
mod within {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secs) => s.serialize_str(&format!("{secs}s")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        Ok(Some(match Raw::deserialize(d)? {
            Raw::Seconds(n) => n,
            Raw::Text(t) => super::parse_within(&t).map_err(serde::de::Error::custom)?,
        }))
    }
}

/// Parses a `keep_within` duration: a whole number with `s`, `m`, `h`, `d` or `w` (`30d`).
pub fn parse_within(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 12h, 30d, 2w)"))?;
    let unit = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        u => return Err(format!("`{text}`: unknown unit `{u}` (s, m, h, d, w)")),
    };
    n.checked_mul(unit)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("`{text}`: a duration must be more than 0 and not absurdly long"))
}

/// One archive and what the plan does with it.
#[derive(Debug, Clone)]
pub struct PruneItem {
    /// The archive.
    pub item: ChainItem,
    /// Why it is kept (`last`, `daily 2026-11-22`, `needed by 000012`, `newest`); empty when it
    /// is removed.
    pub reasons: Vec<String>,
}

impl PruneItem {
    /// Whether the plan keeps this archive.
    pub fn kept(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// The outcome of planning (and, unless a dry run, carrying out) a prune.
#[derive(Debug, Clone, Default)]
pub struct PrunePlan {
    /// Every archive of the chain, oldest first, with its fate.
    pub items: Vec<PruneItem>,
    /// Archives an earlier prune logged as removed but did not get to delete (it was killed):
    /// no part of the chain, deleted now.
    pub leftovers: Vec<ChainItem>,
}

impl PrunePlan {
    /// The archives removed (or, in a dry run, that would be).
    pub fn removed(&self) -> impl Iterator<Item = &ChainItem> {
        self.items.iter().filter(|i| !i.kept()).map(|i| &i.item)
    }
    /// Bytes freed by the removals (leftovers included).
    pub fn freed_bytes(&self) -> u64 {
        self.removed().chain(&self.leftovers).map(|i| i.size).sum()
    }
}

/// A line of [`PRUNED_LOG`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrunedEntry {
    /// The removed archive's sequence number (the last it covered, if compacted).
    pub sequence: u64,
    /// A compacted archive's first sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// Its file name.
    pub file: String,
    /// When it was removed (RFC 3339, UTC).
    pub pruned_at: String,
}

/// The entries of a prune log (`bytes` is the log at `path`, `None` when nothing was ever
/// pruned), and the damage found in it: a line that does not parse is left out and reported
/// (the archives it named removed then read as missing, which verify reports too), so that one
/// damaged line does not make the whole chain unreadable.
pub fn parse_prune_log(path: &Path, bytes: Option<&[u8]>) -> (Vec<PrunedEntry>, Vec<Error>) {
    let (mut entries, mut damage) = (Vec::new(), Vec::new());
    let Some(bytes) = bytes else {
        return (entries, damage);
    };
    for (n, l) in String::from_utf8_lossy(bytes).lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<PrunedEntry>(l) {
            Ok(entry) => entries.push(entry),
            Err(e) => damage.push(Error::Damaged {
                path: path.to_path_buf(),
                cause: format!("line {}: {e} (the line is left out)", n + 1),
            }),
        }
    }
    (entries, damage)
}

/// When the archive's backup was captured, in UTC (`None` if its manifest's time does not parse).
fn captured(item: &ChainItem) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(
        &item.manifest.captured_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .map(|t| t.to_offset(time::UtcOffset::UTC))
}

fn day_of(item: &ChainItem) -> Option<(i32, u16)> {
    let t = captured(item)?;
    Some((t.year(), t.ordinal()))
}

fn week_of(item: &ChainItem) -> Option<(i32, u8)> {
    let (year, week, _) = captured(item)?.to_iso_week_date();
    Some((year, week))
}

/// Decides what a prune keeps. Pure: reads nothing, removes nothing. `chain` is settled and
/// sorted (by sequence): each distinct sequence is a restore point; the policy picks the points
/// to keep, and each kept point keeps the archives of its cheapest path from a full archive
/// (after `tidemark compact`, a compacted archive instead of the many it covers).
pub fn plan_prune(chain: &[ChainItem], retention: &Retention) -> PrunePlan {
    // Restore points, newest first: (sequence, an archive ending there).
    let mut points: Vec<(u64, usize)> = Vec::new();
    for (i, item) in chain.iter().enumerate().rev() {
        if points.last().map(|p| p.0) != Some(item.manifest.sequence) {
            points.push((item.manifest.sequence, i));
        }
    }
    let mut why: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    if let Some(&(newest, _)) = points.first() {
        why.entry(newest).or_default().push("newest".into());
    }
    if let Some(n) = retention.keep_last {
        for &(p, _) in points.iter().take(n) {
            why.entry(p).or_default().push("last".into());
        }
    }
    // Newest backup per period, for the newest N periods that have backups.
    let mut by_period =
        |n: Option<usize>, label: &str, key: &dyn Fn(&ChainItem) -> Option<String>| {
            let Some(n) = n else { return };
            let mut seen: Vec<String> = Vec::new();
            for &(p, i) in &points {
                let Some(k) = key(&chain[i]) else { continue };
                if seen.contains(&k) {
                    continue;
                }
                if seen.len() == n {
                    break;
                }
                why.entry(p).or_default().push(format!("{label} {k}"));
                seen.push(k);
            }
        };
    by_period(retention.keep_daily, "daily", &|c| {
        day_of(c).map(|(y, d)| {
            time::Date::from_ordinal_date(y, d)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| format!("{y}-{d:03}"))
        })
    });
    by_period(retention.keep_weekly, "weekly", &|c| {
        week_of(c).map(|(y, w)| format!("{y}-W{w:02}"))
    });
    if let (Some(secs), Some(&(_, newest))) = (retention.keep_within, points.first()) {
        if let Some(newest_at) = captured(&chain[newest]) {
            let from = newest_at - time::Duration::seconds(secs.min(i64::MAX as u64) as i64);
            for &(p, i) in &points {
                if captured(&chain[i]).is_some_and(|t| t >= from) {
                    why.entry(p)
                        .or_default()
                        .push(format!("within {}", within_label(secs)));
                }
            }
        }
    }
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); chain.len()];
    let best = crate::archive::paths_from_full(chain);
    for (&point, point_reasons) in why.iter().rev() {
        let ends = (0..chain.len()).filter(|&i| chain[i].manifest.sequence == point);
        let cheapest = ends
            .filter_map(|i| best[i].map(|b| (b.objects, b.bytes, i)))
            .min();
        let path = match cheapest {
            Some((_, _, i)) => crate::archive::path_of(&best, i),
            // No path (a damaged chain): keep everything back to a full archive by sequence,
            // so that nothing a kept point might need is lost.
            None => {
                let mut keep = Vec::new();
                for i in (0..chain.len()).rev() {
                    let m = &chain[i].manifest;
                    if m.sequence > point {
                        continue;
                    }
                    keep.push(i);
                    if m.kind == RunKind::Full && m.sequence < point {
                        break;
                    }
                }
                keep.reverse();
                keep
            }
        };
        for &i in &path {
            if chain[i].manifest.sequence == point {
                for r in point_reasons {
                    if !reasons[i].contains(r) {
                        reasons[i].push(r.clone());
                    }
                }
            } else if !reasons[i].iter().any(|r| r.starts_with("needed by")) {
                reasons[i].push(format!("needed by {point:06}"));
            }
        }
    }
    PrunePlan {
        items: chain
            .iter()
            .cloned()
            .zip(reasons)
            .map(|(item, reasons)| PruneItem { item, reasons })
            .collect(),
        leftovers: Vec::new(),
    }
}

/// Plans a prune of the archive chain in `dir` and, unless `dry_run`, removes what nothing kept
/// depends on: the removals are logged durably in [`PRUNED_LOG`] first, then the files are
/// deleted and the directory synced.
pub fn prune_archives(dir: &Path, retention: &Retention, dry_run: bool) -> Result<PrunePlan> {
    prune_local(&LocalChain::new(dir), retention, dry_run)
}

/// [`prune_archives`] for a local chain opened as `chain` (an encrypted one: see
/// [`LocalChain::encrypted`]).
pub fn prune_local(chain: &LocalChain, retention: &Retention, dry_run: bool) -> Result<PrunePlan> {
    let dir = chain.dir();
    check_retention(dir, retention)?;
    crate::destination::not_a_file(dir)?;
    if !dir.is_dir() {
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "no such backup directory".into(),
            source: None,
        });
    }
    let _lock = if dry_run {
        None
    } else {
        Some(crate::lock::DestinationLock::acquire(dir, "prune")?)
    };
    if crate::destination::detect_format(dir)? == Some(crate::destination::DestFormat::Folder) {
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "a folder backup holds one state (nothing to prune); prune applies to \
                    archive chains (--format archive)"
                .into(),
            source: None,
        });
    }
    prune_chain(chain, retention, dry_run)
}

/// `30d`, `12h`, `90s`: the largest unit that divides `secs`.
fn within_label(secs: u64) -> String {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Checks that a retention policy keeps something.
pub fn check_retention(dest: &Path, retention: &Retention) -> Result<()> {
    if retention.is_empty() {
        return Err(Error::BadInput {
            path: dest.to_path_buf(),
            cause: "no retention rule given (--keep-last, --keep-daily, --keep-weekly or \
                    --keep-within)"
                .into(),
            source: None,
        });
    }
    if retention.keep_last.unwrap_or(0)
        + retention.keep_daily.unwrap_or(0)
        + retention.keep_weekly.unwrap_or(0)
        == 0
        && retention.keep_within.is_none()
    {
        return Err(Error::BadInput {
            path: dest.to_path_buf(),
            cause: "every retention rule keeps 0 backups".into(),
            source: None,
        });
    }
    Ok(())
}

/// Plans a prune of the chain in `store` and, unless `dry_run`, carries it out: the prune log
/// first (durably), then each removed archive. A run killed in between leaves archives the log
/// calls pruned, which the next prune removes; never a gap the log does not explain. The caller
/// holds the destination's lock.
pub fn prune_chain(
    store: &dyn ChainStore,
    retention: &Retention,
    dry_run: bool,
) -> Result<PrunePlan> {
    let (chain, leftovers, log) = crate::archive::load_chain(store)?;
    let mut plan = plan_prune(&chain, retention);
    plan.leftovers = leftovers;
    let removed: Vec<&ChainItem> = plan.removed().collect();
    if dry_run || (removed.is_empty() && plan.leftovers.is_empty()) {
        return Ok(plan);
    }
    if removed.is_empty() {
        store.remove(&plan.leftovers.iter().collect::<Vec<_>>())?;
        return Ok(plan);
    }
    let mut text = String::from_utf8_lossy(&log).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let now = now_rfc3339();
    for item in &removed {
        let entry = PrunedEntry {
            sequence: item.manifest.sequence,
            first: item.manifest.covers.as_ref().map(|c| c.first),
            file: file_name(&item.path),
            pruned_at: now.clone(),
        };
        text.push_str(&serde_json::to_string(&entry).expect("an entry serializes"));
        text.push('\n');
    }
    store.write_prune_log(text.as_bytes())?;
    for item in &removed {
        tracing::info!(archive = %file_name(&item.path), "pruned");
    }
    let mut gone = removed;
    gone.extend(&plan.leftovers);
    store.remove(&gone)?;
    Ok(plan)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Archive `seq` of a one-segment-per-full chain, captured at `at`, from checkpoint `from`.
    fn item(seq: u64, full: bool, at: &str) -> ChainItem {
        let name = |s: u64| {
            format!(
                "tidemark-{s:06}-{}-00000000.zip",
                if s == 1 { "full" } else { "incr" }
            )
        };
        let manifest = serde_json::from_value(serde_json::json!({
            "format": "tidemark-archive",
            "format_version": 2,
            "sequence": seq,
            "kind": if full { "full" } else { "incremental" },
            "parent": if full { None } else { Some(name(seq - 1)) },
            "from": if full { None } else { Some(serde_json::json!({"store_id": "s", "position": (seq - 1) * 10})) },
            "to": {"store_id": "s", "position": seq * 10},
            "store_kind": "sqlite",
            "source": "sqlite:a.db",
            "created_at": at,
            "captured_at": at,
            "collections": [],
            "store_schema": {},
            "bytes": 0
        }))
        .unwrap();
        ChainItem {
            path: name(seq).into(),
            manifest,
            size: 100,
        }
    }

    /// `keep_within` keeps every backup captured within the span before the newest one (not
    /// before the clock), and each kept backup keeps its full archive.
    #[test]
    fn keep_within_is_relative_to_the_newest_backup() {
        let chain = vec![
            item(1, true, "2026-11-01T00:00:00Z"),
            item(2, false, "2026-11-01T01:00:00Z"),
            item(3, true, "2026-11-04T00:00:00Z"),
            item(4, false, "2026-11-09T12:00:00Z"),
            item(5, false, "2026-11-11T00:00:00Z"),
        ];
        let retention = Retention {
            keep_within: Some(parse_within("2d").unwrap()),
            ..Retention::default()
        };
        assert!(check_retention(Path::new("x"), &retention).is_ok());
        let plan = plan_prune(&chain, &retention);
        let kept: Vec<u64> = plan
            .items
            .iter()
            .filter(|i| i.kept())
            .map(|i| i.item.manifest.sequence)
            .collect();
        assert_eq!(
            kept,
            [3, 4, 5],
            "{:?}",
            plan.items.iter().map(|i| &i.reasons).collect::<Vec<_>>()
        );
        assert!(plan.items[3].reasons.contains(&"within 2d".to_string()));
        assert!(parse_within("30x").is_err() && parse_within("0d").is_err());
        assert_eq!(parse_within("2w").unwrap(), 14 * 86_400);
    }
}
