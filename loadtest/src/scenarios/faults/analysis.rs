//! What the samples say about one fault, pure: counts while the component was
//! down and after its restart, how long each load took to recover, what the
//! clients were told, and the 100 ms timeline.

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::{Load, Outcome, Sample};

/// The timeline's resolution.
pub const BUCKET_MS: u64 = 100;

/// When one fault happened, in milliseconds since the run's start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub kill_ms: u64,
    pub restart_ms: u64,
    /// When the restarted component answered its readiness check.
    pub ready_ms: u64,
    /// The end of the settle period (the next fault's kill is later).
    pub end_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub refused: u64,
    pub error: u64,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Refused(_) => self.refused += 1,
            Outcome::Error(_) => self.error += 1,
        }
    }

    /// `ok/refused/error`, for a table cell.
    pub fn cell(&self) -> String {
        format!("{}/{}/{}", self.ok, self.refused, self.error)
    }
}

/// How a load came through a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Recovery {
    /// Not one operation failed from the kill to the end of the settle period.
    Unbroken,
    /// The first success after the last failure, in ms after the restart
    /// (negative: the load came back before the component did).
    Recovered { ms: i64 },
    /// It still failed at the end of the settle period.
    NotRecovered,
}

impl Recovery {
    pub fn cell(&self) -> String {
        match self {
            Recovery::Unbroken => "unbroken".into(),
            Recovery::Recovered { ms } => ms.to_string(),
            Recovery::NotRecovered => "NOT RECOVERED".into(),
        }
    }
}

/// A message clients were given, and how often, from the kill to the end of the settle period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub kind: &'static str,
    pub text: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub load: String,
    /// From the kill to the restart.
    pub while_down: Counts,
    /// From the restart to the end of the settle period.
    pub after_restart: Counts,
    pub recovery: Recovery,
    /// Most frequent first.
    pub messages: Vec<Message>,
}

/// One 100 ms bucket; `t_ms` is its start relative to the kill.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub t_ms: i64,
    /// Per load label.
    pub loads: BTreeMap<String, Counts>,
}

pub fn load_report(samples: &[Sample], load: Load, w: &Window) -> LoadReport {
    let mine: Vec<&Sample> =
        samples.iter().filter(|s| s.load == load && s.at_ms >= w.kill_ms && s.at_ms < w.end_ms).collect();
    let mut while_down = Counts::default();
    let mut after_restart = Counts::default();
    let mut messages: BTreeMap<(&'static str, &str), u64> = BTreeMap::new();
    for s in &mine {
        if s.at_ms < w.restart_ms {
            while_down.add(&s.outcome)
        } else {
            after_restart.add(&s.outcome)
        }
        match &s.outcome {
            Outcome::Ok => {}
            Outcome::Refused(text) => *messages.entry(("refused", text)).or_default() += 1,
            Outcome::Error(text) => *messages.entry(("error", text)).or_default() += 1,
        }
    }
    let last_failure = mine.iter().filter(|s| s.outcome != Outcome::Ok).map(|s| s.at_ms).max();
    let recovery = match last_failure {
        None => Recovery::Unbroken,
        Some(last) => match mine.iter().find(|s| s.at_ms >= last && s.outcome == Outcome::Ok) {
            Some(s) => Recovery::Recovered { ms: signed_diff(s.at_ms, w.restart_ms) },
            None => Recovery::NotRecovered,
        },
    };
    let mut messages: Vec<Message> =
        messages.into_iter().map(|((kind, text), count)| Message { kind, text: text.to_owned(), count }).collect();
    messages.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
    LoadReport { load: load.label(), while_down, after_restart, recovery, messages }
}

/// Counts per 100 ms from a second before the kill to the end of the settle period.
pub fn timeline(samples: &[Sample], loads: &[Load], w: &Window) -> Vec<Bucket> {
    let from = w.kill_ms.saturating_sub(1000);
    let buckets = (w.end_ms.saturating_sub(from)).div_ceil(BUCKET_MS);
    let mut out: Vec<Bucket> = (0..buckets)
        .map(|i| Bucket {
            t_ms: signed_diff(from + i * BUCKET_MS, w.kill_ms),
            loads: loads.iter().map(|l| (l.label(), Counts::default())).collect(),
        })
        .collect();
    for s in samples.iter().filter(|s| s.at_ms >= from && s.at_ms < w.end_ms) {
        let index = usize::try_from((s.at_ms - from) / BUCKET_MS).unwrap_or(usize::MAX);
        if let Some(counts) = out.get_mut(index).and_then(|b| b.loads.get_mut(&s.load.label())) {
            counts.add(&s.outcome);
        }
    }
    out
}

fn signed_diff(a: u64, b: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX).saturating_sub(i64::try_from(b).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPENDS: Load = Load::Appends;

    fn at(at_ms: u64, outcome: Outcome) -> Sample {
        Sample { load: APPENDS, at_ms, outcome }
    }

    const WINDOW: Window = Window { kill_ms: 1000, restart_ms: 4000, ready_ms: 4500, end_ms: 9000 };

    #[test]
    fn a_load_that_never_failed_is_unbroken() {
        let samples = vec![at(500, Outcome::Error("before".into())), at(1500, Outcome::Ok), at(5000, Outcome::Ok)];
        let r = load_report(&samples, APPENDS, &WINDOW);
        assert_eq!(r.recovery, Recovery::Unbroken);
        assert_eq!((r.while_down.ok, r.after_restart.ok), (1, 1));
        assert!(r.messages.is_empty());
    }

    #[test]
    fn recovery_is_the_first_success_after_the_last_failure() {
        let samples = vec![
            at(1200, Outcome::Error("connection refused".into())),
            at(3000, Outcome::Error("connection refused".into())),
            at(4100, Outcome::Ok),
            at(4300, Outcome::Refused("503: not ready".into())),
            at(4700, Outcome::Ok),
            at(8000, Outcome::Ok),
        ];
        let r = load_report(&samples, APPENDS, &WINDOW);
        assert_eq!(r.recovery, Recovery::Recovered { ms: 700 });
        assert_eq!(r.while_down, Counts { ok: 0, refused: 0, error: 2 });
        assert_eq!(r.after_restart, Counts { ok: 3, refused: 1, error: 0 });
        assert_eq!(r.messages.first().map(|m| (m.kind, m.count)), Some(("error", 2)));
    }

    #[test]
    fn a_load_failing_at_the_end_has_not_recovered_and_one_back_early_is_negative() {
        let failing = vec![at(1200, Outcome::Ok), at(8900, Outcome::Error("x".into()))];
        assert_eq!(load_report(&failing, APPENDS, &WINDOW).recovery, Recovery::NotRecovered);
        let early = vec![at(1200, Outcome::Error("x".into())), at(2500, Outcome::Ok)];
        assert_eq!(load_report(&early, APPENDS, &WINDOW).recovery, Recovery::Recovered { ms: -1500 });
    }

    #[test]
    fn the_timeline_starts_a_second_before_the_kill() {
        let samples = vec![at(0, Outcome::Ok), at(950, Outcome::Ok), at(1000, Outcome::Error("x".into()))];
        let buckets = timeline(&samples, &[APPENDS], &WINDOW);
        assert_eq!(buckets.len(), 90);
        let first = buckets.first().map(|b| (b.t_ms, b.loads.get("appends").copied()));
        assert_eq!(first, Some((-1000, Some(Counts { ok: 1, refused: 0, error: 0 }))));
        let around_kill: Vec<Counts> =
            buckets.iter().skip(9).take(2).filter_map(|b| b.loads.get("appends").copied()).collect();
        assert_eq!(around_kill, vec![Counts { ok: 1, refused: 0, error: 0 }, Counts { ok: 0, refused: 0, error: 1 }]);
    }
}
