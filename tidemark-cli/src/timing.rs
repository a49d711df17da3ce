//! When scheduled jobs run: an interval (optionally anchored at a time of day, as OrientDB's
//! `firstTime`) or a cron expression, both in local time; the clock the scheduler reads (the
//! system's, or a fake one in tests); and destination name templates (`${DBNAME}`,
//! `${DATE:yyyy-MM-dd}`, as OrientDB's `targetFileName`).

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local, NaiveTime, TimeZone};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A job's schedule.
#[derive(Debug, Clone)]
pub enum When {
    /// Every `interval`, on a grid anchored at the time of day `first` (today), or at the
    /// job's start when there is none.
    Every {
        /// Time between runs.
        interval: Duration,
        /// The time of day of the first run (local).
        first: Option<NaiveTime>,
    },
    /// A cron expression (local time): `sec min hour day month weekday [year]`, or the usual
    /// five fields (`min hour day month weekday`, seconds 0), or `@daily` and the like.
    Cron(Box<cron::Schedule>, String),
}

impl When {
    /// Reads a job's `interval`, `first_time` and `cron`: exactly one of `interval` and
    /// `cron`; `first_time` only with `interval`.
    pub fn of(
        interval: Option<Duration>,
        first_time: Option<&str>,
        cron: Option<&str>,
    ) -> Result<When> {
        match (interval, cron) {
            (Some(_), Some(_)) => bail!("set `interval` or `cron`, not both"),
            (None, None) => bail!("no schedule: set `interval` (e.g. \"6h\") or `cron`"),
            (Some(interval), None) => {
                let first = first_time.map(parse_time_of_day).transpose()?;
                Ok(When::Every { interval, first })
            }
            (None, Some(expr)) => {
                if first_time.is_some() {
                    bail!(
                        "`first_time` goes with `interval`; a cron expression sets its own times"
                    );
                }
                let fields = expr.split_whitespace().count();
                let full = if fields == 5 {
                    format!("0 {expr}")
                } else {
                    expr.to_string()
                };
                let schedule = cron::Schedule::from_str(&full).map_err(|e| {
                    anyhow::anyhow!(
                        "cron `{expr}`: {e} (fields: [sec] min hour day-of-month month \
                         day-of-week [year], e.g. \"0 3 * * *\" or \"*/30 * * * * *\")"
                    )
                })?;
                if schedule.upcoming(Local).next().is_none() {
                    bail!("cron `{expr}` never fires again");
                }
                Ok(When::Cron(Box::new(schedule), expr.to_string()))
            }
        }
    }

    /// The first run of a job started at `start`.
    pub fn first(&self, start: DateTime<Local>) -> DateTime<Local> {
        match self {
            When::Every { first: None, .. } => start,
            When::Every { first: Some(t), .. } => {
                let anchor = at_time_of_day(start, *t);
                if anchor >= start {
                    anchor
                } else {
                    self.after(start - chrono::Duration::seconds(1), start)
                }
            }
            When::Cron(s, _) => s
                .after(&(start - chrono::Duration::seconds(1)))
                .next()
                .unwrap_or(start),
        }
    }

    /// The first scheduled time strictly after `t` (for a grid, anchored at `anchor`).
    fn after(&self, t: DateTime<Local>, anchor: DateTime<Local>) -> DateTime<Local> {
        match self {
            When::Every { interval, first } => {
                let anchor = match first {
                    Some(tod) => at_time_of_day(anchor, *tod),
                    None => anchor,
                };
                let step = chrono::Duration::from_std(*interval)
                    .unwrap_or(chrono::Duration::MAX)
                    .max(chrono::Duration::milliseconds(1));
                let since = t - anchor;
                // Whole steps from the anchor to t, then one more (may be negative).
                let steps = since.num_milliseconds().div_euclid(step.num_milliseconds()) + 1;
                anchor + step * i32::try_from(steps).unwrap_or(i32::MAX)
            }
            When::Cron(s, _) => s
                .after(&t)
                .next()
                .unwrap_or(DateTime::<Local>::MAX_UTC.into()),
        }
    }

    /// When to run next, after a run that started at `started`, now that it is `now`: the
    /// first scheduled time after the start, or `now` when that has passed already (the run
    /// took longer than the interval). A run that starts late because the machine slept
    /// through its time starts at the wake-up, so the next one is the next scheduled time:
    /// missed times give one run, never one per missed time.
    pub fn next(
        &self,
        anchor: DateTime<Local>,
        started: DateTime<Local>,
        now: DateTime<Local>,
    ) -> DateTime<Local> {
        let scheduled = self.after(started, anchor);
        if scheduled > now {
            scheduled
        } else {
            now
        }
    }

    /// The next `n` run times of a job started at `start` (for `run --check`).
    pub fn upcoming(&self, start: DateTime<Local>, n: usize) -> Vec<DateTime<Local>> {
        let mut out = Vec::with_capacity(n);
        let mut t = self.first(start);
        while out.len() < n {
            out.push(t);
            t = self.after(t, start);
        }
        out
    }

    /// How the schedule reads in the log.
    pub fn describe(&self) -> String {
        match self {
            When::Every {
                interval,
                first: None,
            } => format!("every {}", human_duration(*interval)),
            When::Every {
                interval,
                first: Some(t),
            } => format!("every {} from {t}", human_duration(*interval)),
            When::Cron(_, expr) => format!("cron \"{expr}\""),
        }
    }
}

/// `t` on the day of `day` (local); the earliest such time where a clock change makes it
/// ambiguous, the next valid one where it does not exist.
fn at_time_of_day(day: DateTime<Local>, t: NaiveTime) -> DateTime<Local> {
    let naive = day.date_naive().and_time(t);
    match Local.from_local_datetime(&naive) {
        chrono::LocalResult::Single(d) => d,
        chrono::LocalResult::Ambiguous(a, _) => a,
        chrono::LocalResult::None => Local
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .unwrap_or(day),
    }
}

fn parse_time_of_day(s: &str) -> Result<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .with_context(|| format!("first_time `{s}` is not a time of day (HH:MM or HH:MM:SS)"))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    for (unit, n) in [("d", 86_400.0), ("h", 3600.0), ("m", 60.0)] {
        if s >= n && (s / n).fract() == 0.0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// The clock the scheduler reads and sleeps on.
pub trait Clock: Send + Sync {
    /// Now (local wall-clock time).
    fn now(&self) -> DateTime<Local>;
    /// Sleeps until `t` on the wall clock, or until `stop` is set; false on a stop.
    fn sleep_until(&self, t: DateTime<Local>, stop: &AtomicBool) -> bool;
}

/// The system's clock. Sleeps in short steps and compares with the wall clock each time, so
/// that a machine that was suspended notices at once that a run is due (a monotonic sleep
/// would not count the time asleep).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }

    fn sleep_until(&self, t: DateTime<Local>, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let left = t - Local::now();
            if left <= chrono::Duration::zero() {
                return true;
            }
            let step = left
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_millis(100));
            std::thread::sleep(step);
        }
    }
}

/// Expands a destination template: `${DBNAME}` (the store's file or directory name without
/// its extension) and `${DATE:pattern}` (the run's local time; `yyyy`, `yy`, `MM`, `dd`, `HH`,
/// `mm`, `ss`, as OrientDB's `targetFileName` writes them). Anything else is kept as is.
pub fn expand(template: &str, db_name: &str, now: DateTime<Local>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            bail!("`{template}`: a `${{` without its `}}`");
        };
        let name = &rest[at + 2..at + end];
        match name.split_once(':') {
            None if name == "DBNAME" => out.push_str(db_name),
            Some(("DATE", pattern)) => out.push_str(&java_date(pattern, now)?),
            None if name == "DATE" => out.push_str(&now.format("%Y-%m-%d").to_string()),
            _ => {
                bail!("`{template}`: unknown variable `${{{name}}}` (DBNAME, DATE or DATE:pattern)")
            }
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Formats `now` with a Java-style pattern (`yyyy-MM-dd_HH-mm-ss`).
fn java_date(pattern: &str, now: DateTime<Local>) -> Result<String> {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&d| d == c).count();
        let piece = match (c, run) {
            ('y', 4) => now.format("%Y").to_string(),
            ('y', 2) => now.format("%y").to_string(),
            ('M', 2) => now.format("%m").to_string(),
            ('d', 2) => now.format("%d").to_string(),
            ('H', 2) => now.format("%H").to_string(),
            ('m', 2) => now.format("%M").to_string(),
            ('s', 2) => now.format("%S").to_string(),
            (c, _) if c.is_ascii_alphabetic() => {
                bail!(
                    "date pattern `{pattern}`: `{}` is not one of yyyy, yy, MM, dd, HH, mm, ss",
                    chars[i..i + run].iter().collect::<String>()
                )
            }
            (c, n) => std::iter::repeat_n(c, n).collect(),
        };
        out.push_str(&piece);
        i += run;
    }
    if out.contains(['/', '\\']) {
        bail!("date pattern `{pattern}` makes a path separator");
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A local time written `2026-12-02 03:00:00`.
    pub(crate) fn at(s: &str) -> DateTime<Local> {
        Local
            .from_local_datetime(
                &chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap(),
            )
            .earliest()
            .unwrap()
    }

    #[test]
    fn an_interval_from_a_first_time_keeps_its_grid() {
        let w = When::of(Some(Duration::from_secs(6 * 3600)), Some("03:00"), None).unwrap();
        let start = at("2026-12-02 10:30:00");
        let times: Vec<String> = w
            .upcoming(start, 5)
            .iter()
            .map(|t| t.format("%d %H:%M").to_string())
            .collect();
        assert_eq!(
            times,
            ["02 15:00", "02 21:00", "03 03:00", "03 09:00", "03 15:00"]
        );
        // Before the first time of the day: the first run is at it.
        assert_eq!(
            w.first(at("2026-12-02 01:00:00")),
            at("2026-12-02 03:00:00")
        );
    }

    #[test]
    fn cron_with_five_or_six_fields_and_a_missed_run_runs_once() {
        let daily = When::of(None, None, Some("0 3 * * *")).unwrap();
        let start = at("2026-12-02 10:30:00");
        assert_eq!(daily.first(start), at("2026-12-03 03:00:00"));
        let every_10s = When::of(None, None, Some("*/10 * * * * *")).unwrap();
        assert_eq!(
            every_10s.upcoming(at("2026-12-02 10:30:01"), 3),
            [
                at("2026-12-02 10:30:10"),
                at("2026-12-02 10:30:20"),
                at("2026-12-02 10:30:30")
            ]
        );
        // Due at 03:00 on the 3rd, the machine slept until the 6th at 08:00: the run starts
        // at the wake-up, and the next is the 7th at 03:00, not three catch-up runs.
        let woke = at("2026-12-06 08:00:00");
        assert_eq!(
            daily.next(start, woke, at("2026-12-06 08:00:03")),
            at("2026-12-07 03:00:00")
        );
        // A run that outlasts its interval is followed at once by the next, not by one per
        // interval it took.
        let hourly = When::of(Some(Duration::from_secs(3600)), None, None).unwrap();
        let began = at("2026-12-02 10:00:00");
        let ended = at("2026-12-02 13:30:00");
        assert_eq!(hourly.next(began, began, ended), ended);
        assert_eq!(hourly.next(began, ended, ended), at("2026-12-02 14:00:00"));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        let e = |r: Result<When>| format!("{:#}", r.unwrap_err());
        assert!(e(When::of(None, None, None)).contains("no schedule"));
        assert!(
            e(When::of(Some(Duration::from_secs(1)), None, Some("@daily"))).contains("not both")
        );
        assert!(e(When::of(None, None, Some("61 * * * *"))).contains("cron `61 * * * *`"));
        assert!(
            e(When::of(Some(Duration::from_secs(60)), Some("25:00"), None))
                .contains("not a time of day")
        );
        assert!(e(When::of(None, Some("03:00"), Some("@hourly"))).contains("goes with `interval`"));
    }

    #[test]
    fn templates_name_the_store_and_the_date() {
        let now = at("2026-12-02 03:04:05");
        assert_eq!(
            expand("bk/${DBNAME}/${DATE:yyyy-MM-dd_HH-mm-ss}", "orders", now).unwrap(),
            "bk/orders/2026-12-02_03-04-05"
        );
        assert_eq!(expand("bk/${DATE}", "x", now).unwrap(), "bk/2026-12-02");
        assert!(expand("bk/${NOPE}", "x", now).is_err());
        assert!(expand("bk/${DATE:yyyy/MM}", "x", now).is_err());
        assert!(expand("bk/${DATE:yyyy-QQ}", "x", now).is_err());
    }
}
