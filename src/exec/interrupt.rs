//! What an interrupt (Ctrl-C, SIGTERM) of the driver does to the jobs it runs elsewhere:
//! cancels them, or leaves them running for a rerun to adopt (found by name). Instances in
//! this process simply end with it, as before.

use std::io::{BufRead, IsTerminal, Write};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::executor::EXECUTORS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Cancel them without asking (`--cancel-on-exit`).
    Cancel,
    /// Ask on a terminal; off one, leave them.
    Ask,
}

/// From now on, an interrupt ends this process after dealing with its jobs as `policy` says
/// (exit status 128 + the signal, as the shell reports a killed command).
pub fn handle_interrupts(policy: OnInterrupt) {
    let Ok(mut signals) = Signals::new([SIGINT, SIGTERM]) else {
        tracing::warn!("cannot catch Ctrl-C: an interrupt leaves jobs running elsewhere");
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            settle_jobs(policy);
            std::process::exit(128 + signal);
        }
    });
}

fn settle_jobs(policy: OnInterrupt) {
    let jobs: Vec<_> = EXECUTORS.iter().map(|e| (*e, e.jobs_in_flight())).filter(|(_, ids)| !ids.is_empty()).collect();
    let count: usize = jobs.iter().map(|(_, ids)| ids.len()).sum();
    if count == 0 {
        return;
    }
    let cancel = match policy {
        OnInterrupt::Cancel => true,
        OnInterrupt::Ask => ask(&format!("interrupted: cancel the {count} jobs this run is waiting on? [y/N] ")),
    };
    for (executor, ids) in &jobs {
        if cancel {
            executor.cancel(ids);
            eprintln!("cancelled {} {} job(s): {}", ids.len(), executor.name(), ids.join(", "));
        } else {
            eprintln!(
                "left {} {} job(s) running ({}): a rerun adopts them; `--cancel-on-exit` cancels them instead",
                ids.len(),
                executor.name(),
                ids.join(", ")
            );
        }
    }
}

/// A yes from the terminal; no terminal, no yes.
fn ask(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim().to_ascii_lowercase().starts_with('y')
}
