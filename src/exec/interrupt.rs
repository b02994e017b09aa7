//! What an interrupt (Ctrl-C, SIGTERM) of the driver does to the jobs it runs elsewhere:
//! cancels them, or leaves them running for a rerun to adopt (found by name). Instances in
//! this process simply end with it, as before.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::executor::EXECUTORS;

/// Set once the driver is interrupted: no executor submits anything more.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether the driver has been interrupted and is ending.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

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
        let mut signals = signals.forever();
        let Some(signal) = signals.next() else { return };
        STOPPING.store(true, Ordering::SeqCst);
        // Settled on a thread of its own, so that a second interrupt (while a question waits
        // for its answer) ends the process at once.
        std::thread::spawn(move || {
            let ask = policy == OnInterrupt::Ask && signal == SIGINT && in_foreground();
            settle_jobs(policy == OnInterrupt::Cancel, ask);
            std::process::exit(128 + signal);
        });
        if let Some(again) = signals.next() {
            std::process::exit(128 + again);
        }
    });
}

/// Cancels the jobs in flight elsewhere (`cancel`, or a yes when `ask`ed), or says they are
/// left running.
fn settle_jobs(cancel: bool, ask: bool) {
    let count = || EXECUTORS.iter().map(|e| e.jobs_in_flight().len()).sum::<usize>();
    if count() == 0 {
        return;
    }
    let cancel = cancel
        || (ask && self::ask(&format!("interrupted: cancel the {} jobs this run is waiting on? [y/N] ", count())));
    // Taken after the answer: nothing is submitted since the interrupt, and this is all.
    let jobs: Vec<_> = EXECUTORS.iter().map(|e| (*e, e.jobs_in_flight())).filter(|(_, ids)| !ids.is_empty()).collect();
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

/// Whether this process owns the terminal (a driver run with `&` does not, and reading from
/// it would stop the process).
fn in_foreground() -> bool {
    // SAFETY: both only read the process's and the terminal's process group.
    std::io::stdin().is_terminal() && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
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
