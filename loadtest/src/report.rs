//! What a scenario hands back: a table for people on stdout and the same
//! figures as JSON in `loadtest/results/<scenario>.json`, plus the percentile
//! helper every scenario uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

/// Summary of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub count: usize,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Summarizes durations.
    pub fn of_durations(samples: &[Duration]) -> Stats {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Stats::of_ms(ms)
    }

    /// Summarizes millisecond samples (which may be negative, e.g. a difference
    /// of two clocks' readings).
    pub fn of_ms(mut ms: Vec<f64>) -> Stats {
        ms.sort_by(f64::total_cmp);
        let count = ms.len();
        let mean_ms = if count == 0 { 0.0 } else { ms.iter().sum::<f64>() / count as f64 };
        Stats {
            count,
            min_ms: ms.first().copied().unwrap_or(0.0),
            mean_ms,
            p50_ms: percentile(&ms, 50.0),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The nearest-rank percentile `p` (0..=100) of `sorted` (ascending); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied().unwrap_or(0.0)
}

/// A plain text table with right-aligned columns but the first.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self { headers: headers.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                if i == 0 {
                    out.push_str(&format!("{cell:<width$}"));
                } else {
                    out.push_str(&format!("{cell:>width$}"));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// A millisecond figure for a table cell.
pub fn ms(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Where results go unless `--out` says otherwise: `loadtest/results/`.
pub fn default_results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// The machine a run happened on, recorded next to its figures.
#[derive(Debug, Serialize)]
pub struct Host {
    pub cores: usize,
    pub os: &'static str,
    pub arch: &'static str,
    pub debug_build: bool,
}

impl Host {
    pub fn current() -> Host {
        Host {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            debug_build: cfg!(debug_assertions),
        }
    }
}

/// The JSON document of one scenario run.
#[derive(Debug, Serialize)]
pub struct Document<P: Serialize, R: Serialize> {
    pub scenario: &'static str,
    pub started_at_unix_ms: u128,
    pub duration_s: f64,
    pub host: Host,
    pub parameters: P,
    pub notes: Vec<String>,
    pub results: R,
}

pub fn unix_ms_now() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Writes `doc` to `{dir}/{scenario}.json` and returns the path.
pub fn write_json<P: Serialize, R: Serialize>(dir: &Path, doc: &Document<P, R>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", doc.scenario));
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn stats_sort_their_input() {
        let s = Stats::of_ms(vec![3.0, 1.0, 2.0, -1.0]);
        assert_eq!((s.min_ms, s.p50_ms, s.max_ms, s.count), (-1.0, 1.0, 3.0, 4));
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["name", "v"]);
        t.row(vec!["a".into(), "10".into()]);
        t.row(vec!["bbb".into(), "1".into()]);
        assert_eq!(t.render(), "name   v\n--------\na     10\nbbb    1\n");
    }
}
