//! A progress bar on a terminal; plain `tracing` lines otherwise.

use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::store::{InstanceReport, InstanceStatus};

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Holds the stage bar and the bars stages add (model calls), drawn together.
    bars: Option<MultiProgress>,
    running: Mutex<Vec<String>>,
}

impl Progress {
    pub fn new(total: usize, on_terminal: bool) -> Progress {
        let bars = on_terminal.then(MultiProgress::new);
        let bar = bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(total as u64));
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} stages  {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar, bars, running: Mutex::new(Vec::new()) }
    }

    /// Where stages add bars of their own; `None` off a terminal.
    pub fn bars(&self) -> Option<MultiProgress> {
        self.bars.clone()
    }

    pub fn started(&self, name: &str) {
        let mut running = self.running.lock().expect("progress lock");
        running.push(name.to_string());
        match &self.bar {
            Some(bar) => bar.set_message(format!("running {}", running.join(", "))),
            None => tracing::debug!("{name}: started"),
        }
    }

    pub fn finished(&self, report: &InstanceReport) {
        let mut running = self.running.lock().expect("progress lock");
        running.retain(|n| *n != report.name);
        let line = match report.status {
            InstanceStatus::Hit => format!("{}: cached", report.name),
            InstanceStatus::Ran => format!("{}: ran in {:.1} s", report.name, report.duration_ms as f64 / 1000.0),
            InstanceStatus::Failed => format!("{}: FAILED: {}", report.name, report.error.as_deref().unwrap_or("")),
            InstanceStatus::Skipped => format!("{}: skipped ({})", report.name, report.error.as_deref().unwrap_or("")),
        };
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if report.status != InstanceStatus::Hit {
                    bar.println(line);
                }
                bar.set_message(if running.is_empty() {
                    String::new()
                } else {
                    format!("running {}", running.join(", "))
                });
            }
            None if report.status == InstanceStatus::Failed => tracing::error!("{line}"),
            None => tracing::info!("{line}"),
        }
    }

    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
