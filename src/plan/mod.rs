//! The DAG of stage instances (petgraph), their keys, and what is fresh, stale or pending.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::dsl::{Issue, ModelRef, Pipeline, PipelineErrors, Runtime, Scope, StageDef, did_you_mean, resolve};
use crate::stages::{self, Kind, Stage};

mod bind;
mod claims;
mod key;
mod matrix;
mod status;

use bind::{bind_roles, check_output};
pub use key::{KeyError, key_of};
pub use matrix::DEFAULT_MAX_INSTANCES;
use matrix::{InstanceRoom, StageInstances, Unbound, bindings_for, instance_name};
pub use status::{Assessment, Change, State, assess, describe, diff};

/// Domain tag and schema version of stage keys; bumping it invalidates every key.
pub const KEY_SCHEMA: &str = "silkie/stage-key/1";

/// One runnable instance of a stage (a stage with a matrix has several).
pub struct Instance {
    /// `stage` or `stage[axis=value,…]`.
    pub name: String,
    pub stage: String,
    pub kind: &'static Kind,
    pub stage_impl: Box<dyn Stage>,
    pub bindings: BTreeMap<String, Value>,
    /// The params the kind was configured from (matrix values in place): what a process that
    /// runs the instance elsewhere configures it from again.
    pub params: Value,
    pub runtime: Runtime,
    /// Instances this one needs, in `needs` order.
    pub deps: Vec<NodeIndex>,
    /// Role → (upstream instance, output name).
    pub inputs: BTreeMap<String, (NodeIndex, String)>,
    /// For kinds that read every need (`command`): the roles in `needs` order. Such inputs
    /// enter the key by position, so a renamed upstream stage stays a cache hit while
    /// swapping two inputs' contents does not.
    positional_inputs: Option<Vec<String>>,
    /// `{ stage: NAME, output: O }` model references in params → the instance and output they point at.
    model_refs: Vec<(String, Option<String>, NodeIndex, String)>,
    /// `{ path: DIR }` model references in params: their folders, whose digests enter the key.
    model_dirs: Vec<String>,
    pub use_file: Option<PathBuf>,
}

impl Instance {
    /// `{ stage: NAME, output: O }` model references: role name (see
    /// [`stages::model_role`]), upstream instance and output.
    pub fn model_inputs(&self) -> impl Iterator<Item = (String, NodeIndex, &str)> {
        self.model_refs.iter().map(|(stage, output, node, resolved)| {
            (stages::model_role(stage, output.as_deref()), *node, resolved.as_str())
        })
    }
}

pub struct Plan {
    pub graph: DiGraph<Instance, ()>,
    /// Instances in dependency order.
    pub order: Vec<NodeIndex>,
}

impl Plan {
    /// Instances whose stage or instance name is in `targets`, plus everything they need.
    pub fn select(&self, targets: &[String]) -> Result<BTreeSet<NodeIndex>, String> {
        if targets.is_empty() {
            return Ok(self.order.iter().copied().collect());
        }
        let mut selected = BTreeSet::new();
        let mut queue = VecDeque::new();
        for target in targets {
            let matching: Vec<NodeIndex> = self
                .order
                .iter()
                .copied()
                .filter(|&n| self.graph[n].name == *target || self.graph[n].stage == *target)
                .collect();
            if matching.is_empty() {
                let names: Vec<&str> = self.order.iter().map(|&n| self.graph[n].stage.as_str()).collect();
                let help = did_you_mean(target, names).map(|h| format!("; {h}")).unwrap_or_default();
                return Err(format!("no stage named `{target}` in this pipeline{help}"));
            }
            queue.extend(matching);
        }
        while let Some(n) = queue.pop_front() {
            if selected.insert(n) {
                queue.extend(self.graph[n].deps.iter().copied());
            }
        }
        Ok(selected)
    }

    pub fn find(&self, name: &str) -> Vec<NodeIndex> {
        self.order.iter().copied().filter(|&n| self.graph[n].name == name || self.graph[n].stage == name).collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.order.iter().map(|&n| self.graph[n].name.as_str()).collect()
    }
}

/// Builds and validates the instance DAG of a pipeline, refusing one that would expand to
/// more than `max_instances` instances before expanding it.
pub fn build(pipeline: &Pipeline, max_instances: usize) -> Result<Plan, PipelineErrors> {
    let locate = |issues: Vec<Issue>| pipeline.sources.locate_all(issues);
    let stage_deps = stage_dependencies(pipeline).map_err(locate)?;
    let order = stage_order(pipeline, &stage_deps).map_err(locate)?;

    let mut graph: DiGraph<Instance, ()> = DiGraph::new();
    let mut by_stage: HashMap<&str, StageInstances> = HashMap::new();
    let mut issues = Vec::new();
    for name in &order {
        let stage = &pipeline.stages[name.as_str()];
        let deps = &stage_deps[name.as_str()];
        let Some(kind) = stages::kind(&stage.kind) else {
            issues.push(unknown_kind(stage));
            continue;
        };
        let upstream: Vec<&str> = deps.iter().map(String::as_str).collect();
        if upstream.iter().any(|d| !by_stage.contains_key(d)) {
            continue; // an upstream stage already failed validation
        }
        let room = InstanceRoom { made: graph.node_count(), max: max_instances };
        let combos = match bindings_for(stage, &upstream, &by_stage, &graph, room) {
            Ok(c) => c,
            Err(Unbound::Invalid(issue)) => {
                issues.push(issue);
                continue;
            }
            Err(Unbound::TooMany(issue)) => {
                issues.push(issue);
                break; // every later stage would only add to the count
            }
        };
        let mut made = Vec::new();
        let mut names = HashSet::new();
        if let Some(dup) = combos.iter().map(|b| instance_name(name, b)).find(|n| !names.insert(n.clone())) {
            issues.push(Issue::new(format!("stages.{name}.matrix"), format!("two instances would both be named `{dup}`; matrix values must differ as text (like 1 and \"1\" do not)")));
            continue;
        }
        let models = serde_json::to_value(&pipeline.models).unwrap_or_default();
        for bindings in combos {
            match instantiate(pipeline, &models, stage, kind, bindings, &upstream, &by_stage, &graph) {
                Ok(instance) => {
                    let deps = instance.deps.clone();
                    let node = graph.add_node(instance);
                    for dep in deps {
                        graph.add_edge(dep, node, ());
                    }
                    made.push(node);
                }
                Err(mut errs) => issues.append(&mut errs),
            }
        }
        if made.is_empty() {
            continue;
        }
        by_stage.insert(name.as_str(), StageInstances::new(made, &graph));
    }
    if !issues.is_empty() {
        return Err(locate(issues));
    }
    let clashes = claims::check(&graph);
    if !clashes.is_empty() {
        return Err(locate(clashes));
    }
    let order = petgraph::algo::toposort(&graph, None)
        .map_err(|_| locate(vec![Issue::new("stages", "internal error: the instance graph has a cycle")]))?;
    Ok(Plan { graph, order })
}

fn unknown_kind(stage: &StageDef) -> Issue {
    let names = stages::KINDS.iter().map(|k| k.name);
    let known: Vec<&str> = stages::KINDS.iter().map(|k| k.name).collect();
    Issue::new(
        format!("stages.{}.kind", stage.name),
        format!("unknown stage kind `{}`; known kinds: {}", stage.kind, known.join(", ")),
    )
    .with_help(did_you_mean(&stage.kind, names))
}

/// Every stage a stage depends on: its `needs`, explicit `inputs`, and `{ stage: … }` model references.
fn stage_dependencies(pipeline: &Pipeline) -> Result<BTreeMap<&str, Vec<String>>, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut deps = BTreeMap::new();
    let names: Vec<&str> = pipeline.stages.keys().map(String::as_str).collect();
    for (name, stage) in &pipeline.stages {
        let mut mine: Vec<String> = Vec::new();
        let mut add = |dep: &str, path: String, issues: &mut Vec<Issue>| {
            if !pipeline.stages.contains_key(dep) {
                issues.push(
                    Issue::new(path, format!("`{dep}` is not a stage of this pipeline"))
                        .with_help(did_you_mean(dep, names.iter().copied())),
                );
            } else if dep == name {
                issues.push(Issue::new(path, format!("stage `{name}` cannot need itself")));
            } else if !mine.iter().any(|d| d == dep) {
                mine.push(dep.to_string());
            }
        };
        for (i, need) in stage.needs.iter().enumerate() {
            add(&need.stage, format!("stages.{name}.needs[{i}]"), &mut issues);
        }
        for (role, need) in &stage.inputs {
            add(&need.stage, format!("stages.{name}.inputs.{role}"), &mut issues);
        }
        for (param, dep) in stage_input_params(&stage.kind, &stage.params) {
            add(dep, format!("stages.{name}.params.{param}"), &mut issues);
        }
        for (path, reference) in declared_model_references(&stage.kind, &stage.params) {
            if let Some((dep, _)) = reference.stage() {
                add(dep, format!("stages.{name}.{path}"), &mut issues);
            }
        }
        deps.insert(name.as_str(), mine);
    }
    if issues.is_empty() { Ok(deps) } else { Err(issues) }
}

/// Params a kind declares as naming a stage to read (`baseline: NAME`): (param, stage).
fn stage_input_params<'p>(kind: &str, params: &'p Value) -> Vec<(&'static str, &'p str)> {
    let declared = stages::kind(kind).map_or(&[][..], |k| k.stage_inputs);
    declared.iter().filter_map(|(param, _)| params.get(*param).and_then(Value::as_str).map(|s| (*param, s))).collect()
}

/// Model references in the params a kind declares as naming models (`pool`, `judge`, …),
/// with where each sits.
fn declared_model_references(kind: &str, params: &Value) -> Vec<(String, ModelRef)> {
    let fields = stages::kind(kind).map_or(&[][..], |k| k.model_params);
    fields
        .iter()
        .filter_map(|f| params.get(*f).map(|v| ModelRef::all_in(v, &format!("params.{f}"))))
        .flatten()
        .collect()
}

/// Stages in dependency order, or the cycle that prevents one.
fn stage_order(pipeline: &Pipeline, deps: &BTreeMap<&str, Vec<String>>) -> Result<Vec<String>, Vec<Issue>> {
    let mut g: DiGraph<&str, ()> = DiGraph::new();
    let nodes: HashMap<&str, NodeIndex> = deps.keys().map(|&n| (n, g.add_node(n))).collect();
    for (&stage, needs) in deps {
        for need in needs {
            g.add_edge(nodes[stage], nodes[need.as_str()], ());
        }
    }
    match petgraph::algo::toposort(&g, None) {
        Ok(order) => Ok(order.into_iter().rev().map(|n| g[n].to_string()).collect()),
        Err(cycle) => {
            let mut path = find_cycle(&g, cycle.node_id());
            // Start the printed cycle at its first stage by name, so the message is stable.
            path.pop();
            let first_at = (0..path.len()).min_by_key(|&i| g[path[i]]).unwrap_or(0);
            path.rotate_left(first_at);
            path.push(path[0]);
            let first = g[path[0]];
            let at = pipeline.stages[first]
                .needs
                .iter()
                .position(|n| n.stage == g[path[1]])
                .map(|i| format!("stages.{first}.needs[{i}]"))
                .unwrap_or(format!("stages.{first}"));
            let shown: Vec<&str> = path.iter().map(|&n| g[n]).collect();
            Err(vec![Issue::new(at, format!("the stages need each other in a cycle: {}", shown.join(" → ")))])
        }
    }
}

/// A path start → … → start along edges (stage → what it needs).
fn find_cycle(g: &DiGraph<&str, ()>, start: NodeIndex) -> Vec<NodeIndex> {
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for next in g.neighbors_directed(n, Direction::Outgoing) {
            if next == start {
                let mut path = vec![start];
                let mut at = n;
                while at != start {
                    path.push(at);
                    at = parent[&at];
                }
                path.push(start);
                let last = path.len() - 1;
                path[1..last].reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(next) {
                e.insert(n);
                queue.push_back(next);
            }
        }
    }
    vec![start, start]
}

#[allow(clippy::too_many_arguments)]
fn instantiate(
    pipeline: &Pipeline,
    models: &Value,
    stage: &StageDef,
    kind: &'static Kind,
    bindings: BTreeMap<String, Value>,
    upstream: &[&str],
    by_stage: &HashMap<&str, StageInstances>,
    graph: &DiGraph<Instance, ()>,
) -> Result<Instance, Vec<Issue>> {
    let base = format!("stages.{}", stage.name);
    let scope = Scope { vars: &pipeline.vars, models: Some(models), matrix: Some(&bindings), keep_escapes: false };
    let params = resolve(&stage.params, &scope, &format!("{base}.params")).map_err(|i| vec![i])?;
    let stage_impl =
        (kind.configure)(&params, &stages::ConfigureContext { models: &pipeline.models, runtime: &stage.runtime })
            .map_err(|mut i| {
                i.path = format!("{base}.{}", i.path);
                vec![i]
            })?;
    if stage.runtime.compute.gradient_checkpointing.is_some() && !stage_impl.trains() {
        let why = format!("applies to stages that train a model (dpo, sft); a `{}` stage trains none", kind.name);
        return Err(vec![Issue::new(format!("{base}.runtime.gradient_checkpointing"), why)]);
    }
    let deps: BTreeMap<&str, NodeIndex> = upstream
        .iter()
        .map(|&dep| {
            let node = by_stage[dep].matching(&bindings).expect("bindings were built from upstream instances");
            (dep, node)
        })
        .collect();
    let (mut inputs, positional_inputs) = bind_roles(stage, stage_impl.as_ref(), &deps, graph).map_err(|i| vec![i])?;
    for (param, dep) in stage_input_params(&stage.kind, &params) {
        let Some(&node) = deps.get(dep) else {
            let why = format!("`{dep}` must be written as a stage name, not computed by interpolation");
            return Err(vec![Issue::new(format!("{base}.params.{param}"), why)]);
        };
        let output = kind.stage_inputs.iter().find(|(p, _)| *p == param).map_or("", |(_, o)| *o);
        check_output(&format!("{base}.params.{param}"), dep, output, &graph[node].stage_impl.outputs())
            .map_err(|i| vec![i])?;
        inputs.insert(param.to_string(), (node, output.to_string()));
    }
    let mut model_refs = Vec::new();
    let mut model_dirs = Vec::new();
    for (path, reference) in declared_model_references(&stage.kind, &params) {
        if let Some(dir) = reference.path() {
            model_dirs.push(dir.to_string());
        }
        let Some((dep, output)) = reference.stage() else { continue };
        let node = deps[dep];
        let resolved = output.unwrap_or("checkpoint").to_string();
        check_output(&format!("{base}.{path}"), dep, &resolved, &graph[node].stage_impl.outputs())
            .map_err(|i| vec![i])?;
        model_refs.push((dep.to_string(), output.map(String::from), node, resolved));
    }
    let mut ordered_deps: Vec<NodeIndex> = Vec::new();
    for need in stage.needs.iter().map(|n| n.stage.as_str()).chain(deps.keys().copied()) {
        let node = deps[need];
        if !ordered_deps.contains(&node) {
            ordered_deps.push(node);
        }
    }
    Ok(Instance {
        name: instance_name(&stage.name, &bindings),
        stage: stage.name.clone(),
        kind,
        stage_impl,
        bindings,
        params,
        runtime: stage.runtime.clone(),
        deps: ordered_deps,
        inputs,
        positional_inputs,
        model_refs,
        model_dirs,
        use_file: stage.use_file.clone(),
    })
}
