//! How far a long stage has come: a bar on a terminal; off one (CI, `nohup`, a Slurm log) a
//! line at a steady interval, so a stage that runs for minutes is never silent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How often a long stage logs a line off a terminal, unless told otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Progress of one stage instance over `total` units (calls, steps).
pub struct StageProgress {
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    interval: Duration,
    started: Instant,
    lines: Mutex<Lines>,
}

/// What the periodic lines remember between updates.
struct Lines {
    /// Units done before this process started (a resumed run's steps): not timed.
    done_before: u64,
    last_line: Option<Instant>,
}

impl StageProgress {
    /// A bar under `bars` when there are bars (a terminal), periodic lines every `interval`
    /// otherwise.
    pub fn new(
        bars: Option<&MultiProgress>,
        interval: Duration,
        label: &str,
        total: u64,
        unit: &'static str,
    ) -> StageProgress {
        let bar = bars.map(|bars| {
            let bar = bars.add(ProgressBar::new(total));
            let template = format!("  {{prefix}} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  ETA {{eta}}");
            bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar.set_prefix(label.to_string());
            bar
        });
        StageProgress {
            bar,
            label: label.to_string(),
            unit,
            interval,
            started: Instant::now(),
            lines: Mutex::new(Lines { done_before: 0, last_line: None }),
        }
    }

    /// The same, for work `done` units in already (a resumed run): those are not timed.
    pub fn starting_at(self, done: u64) -> StageProgress {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
        self.lines.lock().expect("progress lock").done_before = done;
        self
    }

    /// `done` of `total` units so far; `detail` (a closure, so a bar-less run that prints no
    /// line this time formats nothing) says the rest: "loss 0.41 margin 0.31".
    pub fn update(&self, done: u64, total: u64, detail: impl FnOnce(Duration) -> String) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(detail(self.started.elapsed()));
            return;
        }
        let now = Instant::now();
        let mut lines = self.lines.lock().expect("progress lock");
        let done_before = lines.done_before;
        let due = lines.last_line.is_none_or(|last| now - last >= self.interval);
        if !(due || done == total) {
            return;
        }
        lines.last_line = Some(now);
        drop(lines);
        let elapsed = self.started.elapsed();
        let detail = detail(elapsed);
        let separator = if detail.is_empty() { "" } else { ", " };
        tracing::info!(
            "{}: {done}/{total} {} ({:.0} %){separator}{detail}, elapsed {}, remaining {}",
            self.label,
            self.unit,
            100.0 * done as f64 / total.max(1) as f64,
            clock(elapsed),
            remaining(elapsed, done.saturating_sub(done_before), total.saturating_sub(done)),
        );
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The time left at the rate seen so far, or "?" before any unit was timed.
fn remaining(elapsed: Duration, timed: u64, left: u64) -> String {
    if left == 0 {
        return clock(Duration::ZERO);
    }
    if timed == 0 {
        return "?".into();
    }
    clock(elapsed.mul_f64(left as f64 / timed as f64))
}

/// `1:02:03`, or `2:03` under an hour.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_follows_the_rate_of_the_units_timed_here() {
        assert_eq!(clock(Duration::from_secs(62)), "1:02");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        // 10 steps in 20 s, 30 left: a minute; resumed steps before the first update are not timed.
        assert_eq!(remaining(Duration::from_secs(20), 10, 30), "1:00");
        assert_eq!(remaining(Duration::from_secs(20), 0, 30), "?");
        assert_eq!(remaining(Duration::from_secs(20), 0, 0), "0:00");
    }
}
