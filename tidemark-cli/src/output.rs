//! What the commands print: events, progress bars, byte counts.

use backup_core::Event;
use std::io::Write;

/// A bar counting records on stderr, labelled `what`: a whole-number rate and an ETA, which
/// indicatif smooths over recent progress.
pub(crate) fn records_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>20} [{bar:40}] {pos}/{len} records ({rate}, {eta})",
        )
        .expect("a valid template")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A bar counting bytes on stderr when it is a terminal (`None` otherwise, or when `hidden`).
pub(crate) fn bytes_bar(hidden: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!hidden && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>20} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    })
}

/// A bar counting records labelled `what`, on stderr when it is a terminal (`None` otherwise,
/// or when `hidden`).
pub(crate) fn records_bar_on_terminal(hidden: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!hidden && std::io::stderr().is_terminal()).then(|| records_bar(what))
}

/// A spinner on stderr for work of unknown length, labelled `what`, when stderr is a terminal
/// (`None` otherwise, or when `hidden`); it ticks on its own.
pub(crate) fn spinner(hidden: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!hidden && std::io::stderr().is_terminal()).then(|| ticking_spinner(what, "{spinner} {msg}"))
}

/// A spinner labelled `what`, drawn with `template`, that ticks on its own.
fn ticking_spinner(what: &str, template: &str) -> indicatif::ProgressBar {
    let s = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    s.set_message(what.to_string());
    s.enable_steady_tick(std::time::Duration::from_millis(100));
    s
}

/// A progress bar for a restore (see [`records_bar_on_terminal`]).
pub(crate) fn restore_bar(hidden: bool) -> Option<indicatif::ProgressBar> {
    records_bar_on_terminal(hidden, "restoring")
}

/// A progress bar on stderr for long work, shown only when stderr is a terminal.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    collection: String,
}

impl Progress {
    pub(crate) fn new(hidden: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!hidden && std::io::stderr().is_terminal()).then(|| records_bar(""));
        Progress {
            bar,
            collection: String::new(),
        }
    }

    pub(crate) fn update(&mut self, event: &Event) {
        let Some(bar) = &self.bar else { return };
        match event {
            Event::Progress {
                collection,
                done,
                total,
            } => {
                if *collection != self.collection {
                    self.collection = collection.clone();
                    bar.reset();
                    bar.set_length(total.unwrap_or(*done));
                    bar.set_message(collection.clone());
                }
                bar.set_length(total.unwrap_or(*done).max(*done));
                bar.set_position(*done);
            }
            Event::Written(_) => {}
            Event::Notice(msg) => bar.println(msg),
            Event::Finishing => {
                // The bar is full; what remains has no count: a spinner, on the clock. A new
                // bar, not the records bar restyled: indicatif draws a bar at most 20 times a
                // second after a burst, which the records had used up, so a finish shorter than
                // the wait was never shown. A new bar draws its first line at once.
                bar.finish_and_clear();
                self.bar = Some(ticking_spinner(
                    "finishing: making the backup durable",
                    "{spinner} {msg} {elapsed}",
                ));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub(crate) fn report(out: &mut impl Write, event: &Event, quiet: bool, json: bool) {
    // Output errors (a closed pipe) must not abort a backup; the summary reports the outcome.
    let _ = match event {
        Event::Notice(msg) if json => {
            writeln!(
                out,
                "{}",
                serde_json::json!({"schema": 1, "type": "notice", "message": msg})
            )
        }
        Event::Notice(msg) if !quiet => writeln!(out, "{msg}"),
        Event::Written(w) if json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "write",
                "collection": w.collection.as_str(),
                "document_id": w.document_id,
                "files": w.files,
                "deleted": w.deleted,
            })
        ),
        Event::Finishing if json => writeln!(
            out,
            "{}",
            serde_json::json!({"schema": 1, "type": "progress", "phase": "finishing"})
        ),
        Event::Progress {
            collection,
            done,
            total,
        } if json => writeln!(
            out,
            "{}",
            serde_json::json!({"schema": 1, "type": "progress", "collection": collection, "done": done, "total": total})
        ),
        _ => Ok(()),
    };
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An RFC 3339 time as people read it: to the second, in UTC (`2026-12-01T03:29:47Z`).
/// Anything that does not parse is shown as it is.
pub(crate) fn to_second(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => rfc3339.to_string(),
    }
}
