//! Runs a plan: stale instances in dependency order, independent ones concurrently.
//! A failing instance skips its dependents; everything else still runs.

mod executor;
mod interrupt;
mod local;
mod progress;
mod scheduler;
mod slurm;

use executor::{Described, Submission};
pub use executor::{EXECUTORS, Executor, in_flight, run_described};
pub use interrupt::OnInterrupt;
use scheduler::Scheduler;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;

use crate::plan::{Instance, KeyError, Plan, key_of};
use crate::stages::{Input, RunContext, StageError};
use crate::store::{
    InstanceReport, InstanceStatus, Label, LockMode, OutputRef, RunRecord, StatCache, Store, StoreError, now_ms,
};

pub use progress::Progress;

pub struct RunOptions {
    pub jobs: usize,
    /// Stage or instance names to run, with what they need; empty = all.
    pub targets: Vec<String>,
    /// Stage or instance names to rerun even when fresh.
    pub force: Vec<String>,
    pub lock_timeout: Option<Duration>,
    pub progress: bool,
    /// Off a terminal: how often a long stage logs a progress line.
    pub progress_interval: Duration,
    /// Send no model call; stages that would need one fail, saying how many.
    pub offline: bool,
    /// Where instances run whose stage names no executor (`--executor`).
    pub executor: String,
    /// What an interrupt does to jobs in flight elsewhere (only caught when some instance
    /// runs elsewhere).
    pub on_interrupt: OnInterrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
}

/// One instance to run, with what its upstream instances produced.
struct Job {
    node: NodeIndex,
    inputs: BTreeMap<String, Input>,
    dep_outputs: HashMap<NodeIndex, BTreeMap<String, OutputRef>>,
    force: bool,
}

impl Job {
    fn run(self, env: &RunEnv) -> Finished {
        let Job { node, inputs, dep_outputs, force } = self;
        // A panic in a stage must not leave the run waiting forever for its report.
        let report = std::panic::catch_unwind(AssertUnwindSafe(|| execute(env, node, &inputs, &dep_outputs, force)))
            .unwrap_or_else(|panic| {
                let mut report = blank_report(&env.plan.graph[node], InstanceStatus::Failed);
                report.error = Some(format!("internal error (panic): {}", panic_message(&panic)));
                report
            });
        Finished { node, report }
    }
}

/// What the run of one instance produced.
struct Finished {
    node: NodeIndex,
    report: InstanceReport,
}

/// Shared, read-only state of one run.
struct RunEnv<'a> {
    plan: &'a Plan,
    store: &'a Store,
    stat_cache: &'a StatCache,
    workspace: &'a Path,
    pipeline: &'a str,
    lock_timeout: Option<Duration>,
    offline: bool,
    bars: Option<indicatif::MultiProgress>,
    progress_interval: Duration,
    /// Where instances run whose stage names no executor.
    executor: &'static dyn Executor,
    models: &'a BTreeMap<String, crate::dsl::ModelDef>,
    /// The workspace and the cache as absolute paths, for processes that start elsewhere.
    absolute: (std::path::PathBuf, std::path::PathBuf),
}

/// Runs the selected part of a plan and writes its run record.
pub fn run(
    plan: &Plan,
    store: &Store,
    workspace: &Path,
    pipeline: &crate::dsl::Pipeline,
    opts: &RunOptions,
) -> Result<RunRecord, ExecError> {
    let started = Instant::now();
    let started_unix_ms = now_ms();
    let selected = plan.select(&opts.targets).map_err(ExecError::Usage)?;
    for name in &opts.force {
        if plan.find(name).is_empty() {
            return Err(ExecError::Usage(format!("--force {name}: no such stage in this pipeline")));
        }
    }
    let executor = executor::executor(&opts.executor).ok_or_else(|| {
        ExecError::Usage(format!(
            "--executor {}: no such executor (known: {})",
            opts.executor,
            executor::names().join(", ")
        ))
    })?;
    for inst in selected.iter().map(|&n| &plan.graph[n]) {
        if let Some(name) = &inst.runtime.placement.executor
            && executor::executor(name).is_none()
        {
            let known = executor::names().join(", ");
            return Err(ExecError::Usage(format!(
                "stages.{}.runtime.executor: `{name}` is no executor (known: {known})",
                inst.stage
            )));
        }
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let _store_lock = store.lock_store(LockMode::Shared, opts.lock_timeout)?;
    store.remove_dead_temps();
    let stat_cache = StatCache::load(store);
    let env = RunEnv {
        plan,
        store,
        stat_cache: &stat_cache,
        workspace,
        pipeline: &pipeline.label,
        lock_timeout: opts.lock_timeout,
        offline: opts.offline,
        bars: None,
        progress_interval: opts.progress_interval,
        executor,
        models: &pipeline.models,
        absolute: (absolute(workspace), absolute(store.root())),
    };
    let forced: BTreeSet<NodeIndex> = opts.force.iter().flat_map(|f| plan.find(f)).collect();
    if selected.iter().any(|&n| executor_for(&env, &plan.graph[n]).name() != local::LOCAL.name()) {
        interrupt::handle_interrupts(opts.on_interrupt);
    }

    let order: Vec<NodeIndex> = plan.order.iter().copied().filter(|n| selected.contains(n)).collect();
    let progress = Progress::new(order.len(), opts.progress);
    let env = RunEnv { bars: progress.bars(), ..env };
    let mut scheduler = Scheduler::new(plan, &order);
    let mut outputs: HashMap<NodeIndex, BTreeMap<String, OutputRef>> = HashMap::new();
    let mut running = 0usize;

    let workers = opts.jobs.max(1).min(order.len().max(1));
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = std::sync::Mutex::new(job_rx);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<Finished>();
        // A fixed set of workers, not a thread per instance: a sweep of thousands of cache
        // hits would spend more time starting threads than checking keys.
        for _ in 0..workers {
            let (done_tx, job_rx, env) = (done_tx.clone(), &job_rx, &env);
            scope.spawn(move || {
                while let Ok(job) = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ())) {
                    let _ = done_tx.send(job.run(env));
                }
            });
        }
        drop(done_tx); // with every worker gone, waiting for a report ends
        loop {
            while running < workers {
                let Some(node) = scheduler.next_ready() else { break };
                let inputs = bound_inputs(plan, node, &outputs);
                let dep_outputs: HashMap<NodeIndex, BTreeMap<String, OutputRef>> =
                    plan.graph[node].deps.iter().filter_map(|d| outputs.get(d).map(|o| (*d, o.clone()))).collect();
                progress.started(&plan.graph[node].name);
                running += 1;
                let _ = job_tx.send(Job { node, inputs, dep_outputs, force: forced.contains(&node) });
            }
            if running == 0 {
                break;
            }
            let Ok(done) = done_rx.recv() else { break };
            running -= 1;
            progress.finished(&done.report);
            if matches!(done.report.status, InstanceStatus::Hit | InstanceStatus::Ran) {
                outputs.insert(done.node, done.report.outputs.clone());
            }
            for skipped in scheduler.finish(done.node, done.report) {
                progress.finished(&skipped);
            }
        }
        drop(job_tx); // the workers end once the queue is closed
    });
    progress.clear();
    let _ = stat_cache.save(store);

    let instances = scheduler.into_reports();
    let ok = instances.iter().all(|r| matches!(r.status, InstanceStatus::Hit | InstanceStatus::Ran));
    let record = RunRecord {
        id: format!("{started_unix_ms}-{}", std::process::id()),
        pipeline: pipeline.label.clone(),
        pipeline_name: pipeline.name.clone(),
        started_unix_ms,
        duration_ms: started.elapsed().as_millis() as u64,
        ok,
        hashed_bytes: stat_cache.stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        hashed_files: stat_cache.stats.files.load(std::sync::atomic::Ordering::Relaxed),
        instances,
    };
    store.put_run(&record)?;
    Ok(record)
}

pub(super) fn blank_report(inst: &Instance, status: InstanceStatus) -> InstanceReport {
    InstanceReport {
        name: inst.name.clone(),
        kind: inst.kind.name.to_string(),
        status,
        duration_ms: 0,
        key: None,
        outputs: BTreeMap::new(),
        error: None,
        placement: None,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn bound_inputs(
    plan: &Plan,
    node: NodeIndex,
    outputs: &HashMap<NodeIndex, BTreeMap<String, OutputRef>>,
) -> BTreeMap<String, Input> {
    let inst = &plan.graph[node];
    let roles = inst.inputs.iter().map(|(role, (dep, output))| (role.clone(), *dep, output.as_str()));
    roles
        .chain(inst.model_inputs())
        .filter_map(|(role, dep, output)| {
            let out = outputs.get(&dep)?.get(output)?.clone();
            Some((role, Input { from: format!("{}.{output}", plan.graph[dep].name), output: out }))
        })
        .collect()
}

/// Runs (or finds in the cache) one instance. Never panics on user input: every problem
/// becomes a failed report.
fn execute(
    env: &RunEnv,
    node: NodeIndex,
    inputs: &BTreeMap<String, Input>,
    dep_outputs: &HashMap<NodeIndex, BTreeMap<String, OutputRef>>,
    force: bool,
) -> InstanceReport {
    let inst = &env.plan.graph[node];
    let start = Instant::now();
    let mut report = blank_report(inst, InstanceStatus::Failed);
    match compute(env, inst, inputs, dep_outputs, force, &mut report) {
        Ok((status, outputs)) => {
            report.status = status;
            report.outputs = outputs;
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report.duration_ms = start.elapsed().as_millis() as u64;
    report
}

fn compute(
    env: &RunEnv,
    inst: &Instance,
    inputs: &BTreeMap<String, Input>,
    dep_outputs: &HashMap<NodeIndex, BTreeMap<String, OutputRef>>,
    force: bool,
    report: &mut InstanceReport,
) -> Result<(InstanceStatus, BTreeMap<String, OutputRef>), StageError> {
    let preimage = inst
        .preimage(&env.plan.graph, &|n| dep_outputs.get(&n).cloned(), env.workspace, env.stat_cache)
        .map_err(|e| match e {
            KeyError::Unreadable { what, path, reason } => StageError::Unreadable { what, path, reason },
            KeyError::Pending(up) => StageError::Internal(format!("ran before `{up}` had outputs")),
        })?;
    let key = key_of(&preimage);
    report.key = Some(key.clone());
    let memo = env.store.memo_path();
    let ctx = RunContext {
        workspace: env.workspace,
        store: env.store,
        memo: &memo,
        stat_cache: env.stat_cache,
        instance: &inst.name,
        key: &key,
        inputs,
        offline: env.offline,
        bars: env.bars.clone(),
        progress_interval: env.progress_interval,
        runtime: &inst.runtime,
    };
    let label = Label {
        pipeline: env.pipeline.to_string(),
        instance: inst.name.clone(),
        key: key.clone(),
        preimage: preimage.clone(),
    };

    // Workspace files this instance writes are locked first (sorted, so two runs never
    // deadlock), then its key: no other run writes the same files or computes the same key.
    let mut paths: Vec<String> = inst.stage_impl.workspace_outputs();
    paths.sort();
    paths.dedup();
    for path in &paths {
        ctx.workspace_path(path)?; // refused before anything runs or is restored
    }
    let _path_locks = paths
        .iter()
        .map(|p| {
            let what = format!("`{p}` (another silkie run is writing it)");
            env.store.lock_named(&format!("workspace:{}", env.workspace.join(p).display()), &what, env.lock_timeout)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A complete record is final (written by rename), so a hit needs no key lock; only
    // computing does, and then the record is looked for again in case a run just wrote it.
    if !force && let Some(hit) = cached(env, inst, &ctx, &label)? {
        return Ok(hit);
    }
    let _lock =
        env.store.lock_key(&key, &format!("`{}` (another silkie run is computing it)", inst.name), env.lock_timeout)?;
    if !force && let Some(hit) = cached(env, inst, &ctx, &label)? {
        return Ok(hit);
    }
    let description = Described {
        workspace: env.absolute.0.clone(),
        cache: env.absolute.1.clone(),
        pipeline: env.pipeline.to_string(),
        instance: inst.name.clone(),
        kind: inst.kind.name.to_string(),
        params: inst.params.clone(),
        models: env.models.clone(),
        runtime: inst.runtime.clone(),
        key: key.clone(),
        preimage,
        inputs: inputs.clone(),
        offline: env.offline,
        progress_interval_ms: env.progress_interval.as_millis() as u64,
        memo: None,
    };
    let submission = Submission { stage: inst.stage_impl.as_ref(), ctx: &ctx, description: &description };
    let (outputs, placement) = executor_for(env, inst).run(&submission)?;
    report.placement = Some(placement);
    update_label(env.store, &label)?;
    Ok((InstanceStatus::Ran, outputs))
}

/// Where `inst` runs: the executor its stage names, else the run's — except that a cheap
/// instance stays local unless its stage itself asks for an executor that takes only those.
fn executor_for(env: &RunEnv, inst: &Instance) -> &'static dyn Executor {
    match inst.runtime.placement.executor.as_deref().and_then(executor::executor) {
        Some(named) => named,
        None if env.executor.keeps_cheap_local() && inst.stage_impl.is_cheap() => &local::LOCAL,
        None => env.executor,
    }
}

type Done = (InstanceStatus, BTreeMap<String, OutputRef>);

/// A cache hit: the complete record for the label's key, with workspace files restored.
fn cached(env: &RunEnv, inst: &Instance, ctx: &RunContext, label: &Label) -> Result<Option<Done>, StageError> {
    let Some(record) = env.store.complete_record(&label.key)? else { return Ok(None) };
    inst.stage_impl.restore(ctx, &record.outputs)?;
    update_label(env.store, label)?;
    Ok(Some((InstanceStatus::Hit, record.outputs)))
}

/// Records the key this instance last ran with; skipped when unchanged, which keeps a
/// no-op rerun free of writes.
fn update_label(store: &Store, label: &Label) -> Result<(), StoreError> {
    if store.label(&label.pipeline, &label.instance)?.is_some_and(|old| old.key == label.key) {
        return Ok(());
    }
    store.put_label(label)
}
