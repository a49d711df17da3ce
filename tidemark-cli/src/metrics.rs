//! Monitoring: Prometheus metrics served over HTTP (`--metrics-addr`) by `tidemark run` and
//! `backup --live`, and heartbeat calls after each run (healthchecks.io style: one URL after a
//! success, another after a failure), on threads of their own so that a slow or dead monitor
//! never holds a backup up.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What one job (or live backup) did, as the metrics report it.
#[derive(Debug, Default, Clone)]
struct JobMetrics {
    last_success: Option<f64>,
    last_failure: Option<f64>,
    last_duration: Option<f64>,
    runs_ok: u64,
    runs_failed: u64,
    bytes: u64,
    records: u64,
    chain_length: Option<u64>,
    captured_at: Option<f64>,
}

/// The metrics of every job of this process.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<String, JobMetrics>>,
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An RFC 3339 time as seconds since the Unix epoch.
fn unix_of(rfc3339: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// What a successful run reports.
pub struct RunReport<'a> {
    /// The run's wall time.
    pub duration: Duration,
    /// Bytes written (archive size, or document bytes).
    pub bytes: u64,
    /// Records written.
    pub records: u64,
    /// When the state the backup now holds was read from the store (RFC 3339).
    pub captured_at: &'a str,
    /// Archives in the destination's chain, when it is one.
    pub chain_length: Option<u64>,
}

impl Metrics {
    /// Declares a job, so that it shows (with zero runs) before its first run.
    pub fn declare(&self, job: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.entry(job.to_string()).or_default();
        }
    }

    /// Records a successful run of `job`.
    pub fn success(&self, job: &str, run: &RunReport<'_>) {
        if let Ok(mut jobs) = self.jobs.lock() {
            let m = jobs.entry(job.to_string()).or_default();
            m.last_success = Some(unix_now());
            m.last_duration = Some(run.duration.as_secs_f64());
            m.runs_ok += 1;
            m.bytes += run.bytes;
            m.records += run.records;
            m.captured_at = unix_of(run.captured_at).or(m.captured_at);
            if run.chain_length.is_some() {
                m.chain_length = run.chain_length;
            }
        }
    }

    /// Records a failed run of `job` (after its retries).
    pub fn failure(&self, job: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            let m = jobs.entry(job.to_string()).or_default();
            m.last_failure = Some(unix_now());
            m.runs_failed += 1;
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let jobs = match self.jobs.lock() {
            Ok(j) => j.clone(),
            Err(_) => return String::new(),
        };
        let now = unix_now();
        let mut out = String::new();
        let mut family =
            |name: &str,
             kind: &str,
             help: &str,
             value: &dyn Fn(&JobMetrics) -> Vec<(String, f64)>| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for (job, m) in &jobs {
                    for (extra, v) in value(m) {
                        out.push_str(&format!(
                            "{name}{{job=\"{}\"{extra}}} {v}\n",
                            escape_label(job)
                        ));
                    }
                }
            };
        let one = |v: Option<f64>| v.map(|v| (String::new(), v)).into_iter().collect();
        family(
            "tidemark_last_success_timestamp_seconds",
            "gauge",
            "When the job's last successful run ended (Unix time).",
            &|m| one(m.last_success),
        );
        family(
            "tidemark_last_failure_timestamp_seconds",
            "gauge",
            "When the job's last failed run ended (Unix time).",
            &|m| one(m.last_failure),
        );
        family(
            "tidemark_run_duration_seconds",
            "gauge",
            "Wall time of the job's last successful run.",
            &|m| one(m.last_duration),
        );
        family(
            "tidemark_runs_total",
            "counter",
            "Runs of the job, by result (a failed run counts once, after its retries).",
            &|m| {
                vec![
                    (",result=\"success\"".into(), m.runs_ok as f64),
                    (",result=\"failure\"".into(), m.runs_failed as f64),
                ]
            },
        );
        family(
            "tidemark_written_bytes_total",
            "counter",
            "Bytes the job's runs wrote.",
            &|m| vec![(String::new(), m.bytes as f64)],
        );
        family(
            "tidemark_written_records_total",
            "counter",
            "Records the job's runs wrote.",
            &|m| vec![(String::new(), m.records as f64)],
        );
        family(
            "tidemark_backup_lag_seconds",
            "gauge",
            "How old the state the backup holds is: now minus when it was read from the store \
             (for a live backup, the live lag plus the time since the last flush).",
            &|m| one(m.captured_at.map(|c| (now - c).max(0.0))),
        );
        family(
            "tidemark_chain_archives",
            "gauge",
            "Archives in the job's chain after its last run.",
            &|m| one(m.chain_length.map(|n| n as f64)),
        );
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `metrics` at `http://ADDR/metrics` on a thread of its own; returns the address bound
/// (`127.0.0.1:0` picks a free port).
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}: binding"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tidemark-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // The rest of the request head.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if request.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", "metrics are at /metrics\n".to_string())
                };
                let mut w = &stream;
                let _ = write!(
                    w,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .context("starting the metrics server")?;
    Ok(bound)
}

/// Heartbeat calls in flight, waited for (up to their timeout) before the process exits.
static PENDING: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// How long a heartbeat call may take.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `url` (HTTP GET) on a thread of its own, with [`HEARTBEAT_TIMEOUT`]; a failure is
/// passed to `report` (for the log) and changes nothing else. Never blocks the caller.
pub fn ping(url: String, report: Box<dyn FnOnce(String) + Send>) {
    let handle = std::thread::spawn(move || {
        if let Err(e) = get(&url) {
            report(format!("heartbeat {url} failed: {e:#}"));
        }
    });
    if let Ok(mut pending) = PENDING.lock() {
        pending.retain(|h| !h.is_finished());
        pending.push(handle);
    }
}

/// Waits for the heartbeat calls still in flight (each ends within its timeout).
pub fn wait_for_heartbeats() {
    let pending = match PENDING.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(_) => return,
    };
    for h in pending {
        let _ = h.join();
    }
}

#[cfg(feature = "remote")]
fn get(url: &str) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(HEARTBEAT_TIMEOUT)
        .build()?;
    let response = client.get(url).send()?;
    if !response.status().is_success() {
        anyhow::bail!("HTTP {}", response.status());
    }
    Ok(())
}

#[cfg(not(feature = "remote"))]
fn get(_url: &str) -> Result<()> {
    anyhow::bail!(
        "this tidemark was built without an HTTP client (rebuild with `--features remote`)"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_exposition_names_each_job_and_counts_runs() {
        let m = Metrics::default();
        m.declare("idle");
        m.success(
            "shop \"main\"",
            &RunReport {
                duration: Duration::from_millis(1500),
                bytes: 2048,
                records: 10,
                captured_at: "2026-12-02T03:00:00Z",
                chain_length: Some(3),
            },
        );
        m.failure("shop \"main\"");
        let text = m.render();
        assert!(
            text.contains("tidemark_runs_total{job=\"shop \\\"main\\\"\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidemark_runs_total{job=\"shop \\\"main\\\"\",result=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidemark_run_duration_seconds{job=\"shop \\\"main\\\"\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("tidemark_chain_archives{job=\"shop \\\"main\\\"\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tidemark_runs_total{job=\"idle\",result=\"success\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("tidemark_last_success_timestamp_seconds{job=\"idle\"}"),
            "{text}"
        );
    }
}
