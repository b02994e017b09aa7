//! The DAG of stage instances (petgraph), their keys, and what is fresh, stale or pending.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::dsl::{Issue, Need, Pipeline, PipelineErrors, Runtime, Scope, StageDef, did_you_mean, resolve};
use crate::stages::{self, Kind, OutputDecl, Roles, Stage};
use crate::store::{OutputRef, StatCache, Store};

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

/// Builds and validates the instance DAG of a pipeline.
pub fn build(pipeline: &Pipeline) -> Result<Plan, PipelineErrors> {
    let locate = |issues: Vec<Issue>| pipeline.sources.locate_all(issues);
    let stage_deps = stage_dependencies(pipeline).map_err(locate)?;
    let order = stage_order(pipeline, &stage_deps).map_err(locate)?;

    let mut graph: DiGraph<Instance, ()> = DiGraph::new();
    let mut by_stage: HashMap<&str, Vec<NodeIndex>> = HashMap::new();
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
        let combos = match bindings_for(stage, &upstream, &by_stage, &graph) {
            Ok(c) => c,
            Err(issue) => {
                issues.push(issue);
                continue;
            }
        };
        let mut made = Vec::new();
        let names: Vec<String> = combos.iter().map(|b| instance_name(name, b)).collect();
        if let Some(dup) = names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n)) {
            issues.push(Issue::new(format!("stages.{name}.matrix"), format!("two instances would both be named `{dup}`; matrix values must differ as text (like 1 and \"1\" do not)")));
            continue;
        }
        for bindings in combos {
            match instantiate(pipeline, stage, kind, bindings, &upstream, &by_stage, &graph) {
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
        by_stage.insert(name.as_str(), made);
    }
    if !issues.is_empty() {
        return Err(locate(issues));
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
        for (path, need) in declared_model_references(&stage.kind, &stage.params) {
            add(&need.stage, format!("stages.{name}.{path}"), &mut issues);
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

/// Model references in the params a kind declares as model fields (`pool`, `judge`, …).
fn declared_model_references(kind: &str, params: &Value) -> Vec<(String, Need)> {
    let fields = stages::kind(kind).map_or(&[][..], |k| k.model_params);
    fields
        .iter()
        .filter_map(|f| params.get(*f).map(|v| model_references(v, &format!("params.{f}"))))
        .flatten()
        .collect()
}

/// `{ stage: NAME, output?: O, … }` maps anywhere in a model field.
fn model_references(value: &Value, path: &str) -> Vec<(String, Need)> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            if let Some(Value::String(stage)) = map.get("stage") {
                let output = map.get("output").and_then(Value::as_str).map(String::from);
                found.push((path.to_string(), Need { stage: stage.clone(), output }));
            }
            for (k, v) in map {
                found.extend(model_references(v, &format!("{path}.{k}")));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                found.extend(model_references(v, &format!("{path}[{i}]")));
            }
        }
        _ => {}
    }
    found
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

fn consistent(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// The matrix bindings of a stage's instances: those of its upstream stages (fan-out),
/// combined consistently, times its own matrix.
fn bindings_for(
    stage: &StageDef,
    upstream: &[&str],
    by_stage: &HashMap<&str, Vec<NodeIndex>>,
    graph: &DiGraph<Instance, ()>,
) -> Result<Vec<BTreeMap<String, Value>>, Issue> {
    let mut combos = vec![BTreeMap::new()];
    for dep in upstream {
        let mut next = Vec::new();
        for combo in &combos {
            for &node in &by_stage[dep] {
                let theirs = &graph[node].bindings;
                if consistent(combo, theirs) {
                    let mut merged = combo.clone();
                    merged.extend(theirs.clone());
                    if !next.contains(&merged) {
                        next.push(merged);
                    }
                }
            }
        }
        combos = next;
    }
    for (axis, values) in &stage.matrix {
        if combos.iter().any(|c| c.contains_key(axis)) {
            return Err(Issue::new(
                format!("stages.{}.matrix.{axis}", stage.name),
                format!("the matrix axis `{axis}` is already swept by a stage this one needs; rename one of them"),
            ));
        }
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(axis.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    Ok(combos)
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn instance_name(stage: &str, bindings: &BTreeMap<String, Value>) -> String {
    if bindings.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = bindings.iter().map(|(k, v)| format!("{k}={}", render(v))).collect();
    format!("{stage}[{}]", parts.join(","))
}

fn instantiate(
    pipeline: &Pipeline,
    stage: &StageDef,
    kind: &'static Kind,
    bindings: BTreeMap<String, Value>,
    upstream: &[&str],
    by_stage: &HashMap<&str, Vec<NodeIndex>>,
    graph: &DiGraph<Instance, ()>,
) -> Result<Instance, Vec<Issue>> {
    let base = format!("stages.{}", stage.name);
    let models = serde_json::to_value(&pipeline.models).unwrap_or_default();
    let scope = Scope { vars: &pipeline.vars, models: &models, matrix: Some(&bindings), keep_escapes: false };
    let params = resolve(&stage.params, &scope, &format!("{base}.params")).map_err(|i| vec![i])?;
    let stage_impl = (kind.configure)(&params, &stages::Config { models: &pipeline.models, runtime: &stage.runtime })
        .map_err(|mut i| {
        i.path = format!("{base}.{}", i.path);
        vec![i]
    })?;
    let deps: BTreeMap<&str, NodeIndex> = upstream
        .iter()
        .map(|&dep| {
            let node = by_stage[dep]
                .iter()
                .copied()
                .find(|&n| consistent(&graph[n].bindings, &bindings))
                .expect("bindings were built from upstream instances");
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
    for (path, need) in declared_model_references(&stage.kind, &params) {
        let node = deps[need.stage.as_str()];
        let output = need.output.clone().unwrap_or_else(|| "checkpoint".to_string());
        check_output(&format!("{base}.{path}"), &need.stage, &output, &graph[node].stage_impl.outputs())
            .map_err(|i| vec![i])?;
        model_refs.push((need.stage, need.output, node, output));
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
        runtime: stage.runtime.clone(),
        deps: ordered_deps,
        inputs,
        positional_inputs,
        model_refs,
        use_file: stage.use_file.clone(),
    })
}

fn check_output(path: &str, stage: &str, output: &str, outputs: &[OutputDecl]) -> Result<(), Issue> {
    if outputs.iter().any(|o| o.name == output) {
        return Ok(());
    }
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    Err(Issue::new(
        path,
        format!(
            "stage `{stage}` has no output `{output}`; its outputs: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ),
    )
    .with_help(did_you_mean(output, names)))
}

type Bound = BTreeMap<String, (NodeIndex, String)>;

/// Binds each input role to an upstream output, as DESIGN §3 says.
fn bind_roles(
    stage: &StageDef,
    stage_impl: &dyn Stage,
    deps: &BTreeMap<&str, NodeIndex>,
    graph: &DiGraph<Instance, ()>,
) -> Result<(Bound, Option<Vec<String>>), Issue> {
    let base = format!("stages.{}", stage.name);
    // What each `needs` entry offers: (stage, output decl), narrowed by `stage.output`.
    let mut offered: Vec<(&str, NodeIndex, OutputDecl)> = Vec::new();
    for (i, need) in stage.needs.iter().enumerate() {
        let node = deps[need.stage.as_str()];
        let outputs = graph[node].stage_impl.outputs();
        if let Some(output) = &need.output {
            check_output(&format!("{base}.needs[{i}]"), &need.stage, output, &outputs)?;
        }
        for decl in outputs {
            if need.output.as_ref().is_none_or(|o| *o == decl.name) {
                offered.push((need.stage.as_str(), node, decl));
            }
        }
    }
    let roles = match stage_impl.roles() {
        Roles::EveryNeed => {
            let order = offered.iter().map(|(s, _, decl)| format!("{s}.{}", decl.name)).collect();
            let bound =
                offered.into_iter().map(|(s, node, decl)| (format!("{s}.{}", decl.name), (node, decl.name))).collect();
            return Ok((bound, Some(order)));
        }
        Roles::Named(roles) => roles,
    };
    let mut bound = BTreeMap::new();
    for &role in roles {
        if let Some(need) = stage.inputs.get(role) {
            let node = deps[need.stage.as_str()];
            let output = need.output.clone().unwrap_or_else(|| role.to_string());
            check_output(&format!("{base}.inputs.{role}"), &need.stage, &output, &graph[node].stage_impl.outputs())?;
            bound.insert(role.to_string(), (node, output));
            continue;
        }
        let named: Vec<_> = offered.iter().filter(|(_, _, d)| d.name == role).collect();
        let tables: Vec<_> = offered.iter().filter(|(_, _, d)| d.table).collect();
        let chosen = match (named.as_slice(), tables.as_slice()) {
            ([one], _) => one,
            ([], [one]) => one,
            (several, tables) => {
                let candidates: Vec<String> = if several.is_empty() {
                    tables.iter().map(|(s, _, d)| format!("{s}.{}", d.name)).collect()
                } else {
                    several.iter().map(|(s, _, d)| format!("{s}.{}", d.name)).collect()
                };
                let why = if candidates.is_empty() {
                    "no stage in `needs` provides a table".to_string()
                } else {
                    format!("it could be any of {}", candidates.join(", "))
                };
                return Err(Issue::new(
                    format!("{base}.needs"),
                    format!("cannot tell which output feeds the input `{role}`: {why}"),
                )
                .with_help(Some(format!(
                    "name it: `inputs: {{ {role}: STAGE.OUTPUT }}`, or list the stage in `needs`"
                ))));
            }
        };
        bound.insert(role.to_string(), (chosen.1, chosen.2.name.clone()));
    }
    if let Some(extra) = stage.inputs.keys().find(|r| !roles.contains(&r.as_str())) {
        return Err(Issue::new(
            format!("{base}.inputs.{extra}"),
            format!(
                "kind `{}` has no input `{extra}`; its inputs: {}",
                stage.kind,
                if roles.is_empty() { "none".into() } else { roles.join(", ") }
            ),
        )
        .with_help(did_you_mean(extra, roles.iter().copied())));
    }
    Ok((bound, None))
}

/// Why a key cannot be computed yet.
#[derive(Debug, Clone)]
pub enum KeyError {
    /// An upstream instance has no known outputs yet.
    Pending(String),
    /// A file the key reads is missing or unreadable.
    File(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Pending(up) => write!(f, "waits on `{up}`"),
            KeyError::File(msg) => f.write_str(msg),
        }
    }
}

impl Instance {
    /// The canonical pre-image of this instance's key, from its upstream outputs.
    pub fn preimage(
        &self,
        graph: &DiGraph<Instance, ()>,
        outputs_of: &dyn Fn(NodeIndex) -> Option<BTreeMap<String, OutputRef>>,
        workspace: &Path,
        stat_cache: &StatCache,
    ) -> Result<Value, KeyError> {
        let digest_of = |node: NodeIndex, output: &str| -> Result<String, KeyError> {
            let outputs = outputs_of(node).ok_or_else(|| KeyError::Pending(graph[node].name.clone()))?;
            outputs
                .get(output)
                .map(|o| o.digest.clone())
                .ok_or_else(|| KeyError::Pending(format!("{}.{output}", graph[node].name)))
        };
        let inputs = match &self.positional_inputs {
            Some(order) => {
                let digests = order.iter().map(|role| {
                    let (node, output) = &self.inputs[role];
                    digest_of(*node, output)
                });
                Value::Array(digests.map(|d| d.map(Value::String)).collect::<Result<_, _>>()?)
            }
            None => {
                let mut map = Map::new();
                for (role, (node, output)) in &self.inputs {
                    map.insert(role.clone(), Value::String(digest_of(*node, output)?));
                }
                Value::Object(map)
            }
        };
        let mut params = self.stage_impl.canonical_params();
        for (stage, output, node, resolved) in &self.model_refs {
            let digest = digest_of(*node, resolved)?;
            substitute_model_ref(&mut params, stage, output.as_deref(), &digest);
        }
        let mut files = Map::new();
        for path in self.stage_impl.key_files().into_iter().chain(self.use_file.clone()) {
            let full = workspace.join(&path);
            let digest = stat_cache
                .digest(&full)
                .map_err(|e| KeyError::File(format!("cannot read `{}`: {}", path.display(), io_reason(&e))))?;
            files.insert(path.to_string_lossy().into_owned(), Value::String(digest));
        }
        Ok(json!({
            "schema": KEY_SCHEMA,
            "kind": self.kind.name,
            "kind_version": self.kind.version,
            "params": params,
            "inputs": inputs,
            "files": files,
        }))
    }
}

fn io_reason(e: &crate::store::StoreError) -> String {
    match e {
        crate::store::StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "no such file".into()
        }
        crate::store::StoreError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Replaces a `{ stage: NAME, output: O }` reference by the digest it resolves to, so a
/// renamed stage keeps its key.
fn substitute_model_ref(value: &mut Value, stage: &str, output: Option<&str>, digest: &str) {
    match value {
        Value::Object(map) => {
            let matches = map.get("stage").and_then(Value::as_str) == Some(stage)
                && map.get("output").and_then(Value::as_str) == output;
            if matches {
                map.remove("stage");
                map.remove("output");
                map.insert("digest".into(), Value::String(digest.to_string()));
            }
            for v in map.values_mut() {
                substitute_model_ref(v, stage, output, digest);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute_model_ref(v, stage, output, digest)),
        _ => {}
    }
}

/// BLAKE3 of the canonical encoding (sorted keys, typed values).
pub fn key_of(preimage: &Value) -> String {
    let bytes = serde_json::to_vec(preimage).expect("JSON values always serialize");
    blake3::hash(&bytes).to_hex().to_string()
}

/// One difference between two key pre-images.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// Leaf-level differences between two pre-images (missing = null).
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    out
}

fn diff_into(old: &Value, new: &Value, path: &str, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_into(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), &child, out);
            }
        }
        (a, b) if a != b => out.push(Change { path: path.to_string(), old: a.clone(), new: b.clone() }),
        _ => {}
    }
}

/// The state `silkie status` reports for one instance.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    pub name: String,
    pub kind: String,
    pub state: State,
    pub reason: Option<String>,
    #[serde(skip)]
    pub key: Option<String>,
    #[serde(skip)]
    pub preimage: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fresh,
    Stale,
    Pending,
    Never,
}

/// What is fresh, stale (and why), pending or never run — without running anything.
pub fn assess(
    plan: &Plan,
    store: &Store,
    stat_cache: &StatCache,
    workspace: &Path,
    pipeline_label: &str,
) -> Vec<Assessment> {
    let mut known: HashMap<NodeIndex, BTreeMap<String, OutputRef>> = HashMap::new();
    let mut out = Vec::new();
    for &node in &plan.order {
        let inst = &plan.graph[node];
        let label = store.label(pipeline_label, &inst.name).ok().flatten();
        let mut assessment = Assessment {
            name: inst.name.clone(),
            kind: inst.kind.name.to_string(),
            state: State::Never,
            reason: None,
            key: None,
            preimage: None,
        };
        match inst.preimage(&plan.graph, &|n| known.get(&n).cloned(), workspace, stat_cache) {
            Err(KeyError::Pending(up)) => {
                assessment.state = State::Pending;
                assessment.reason = Some(format!("waits on `{up}`, which is not fresh"));
            }
            Err(KeyError::File(msg)) => {
                assessment.state = if label.is_some() { State::Stale } else { State::Never };
                assessment.reason = Some(msg);
            }
            Ok(preimage) => {
                let key = key_of(&preimage);
                match store.complete_record(&key).ok().flatten() {
                    Some(record) => {
                        assessment.state = State::Fresh;
                        known.insert(node, record.outputs);
                    }
                    None => match &label {
                        None => assessment.state = State::Never,
                        Some(label) => {
                            assessment.state = State::Stale;
                            assessment.reason = Some(describe(&diff(&label.preimage, &preimage)));
                        }
                    },
                }
                assessment.key = Some(key);
                assessment.preimage = Some(preimage);
            }
        }
        out.push(assessment);
    }
    out
}

/// A one-line reason from a pre-image diff.
pub fn describe(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "its outputs are no longer in the cache (gc)".to_string();
    }
    let shown: Vec<String> = changes
        .iter()
        .take(3)
        .map(|c| match c.path.split_once('.') {
            Some(("inputs", role)) => format!("input `{role}` changed"),
            Some(("files", file)) => format!("file `{file}` changed"),
            _ => format!("{}: {} → {}", c.path, short(&c.old), short(&c.new)),
        })
        .collect();
    let more = if changes.len() > 3 { format!(" (+{} more)", changes.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join("; "))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_leaf_paths() {
        let a = json!({"params": {"beta": 0.1, "x": 1}, "inputs": {"t": "aa"}});
        let b = json!({"params": {"beta": 0.2, "x": 1}, "inputs": {"t": "bb"}});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "inputs.t");
        assert_eq!(d[1], Change { path: "params.beta".into(), old: json!(0.1), new: json!(0.2) });
        assert_eq!(describe(&d), "input `t` changed; params.beta: 0.1 → 0.2");
    }

    #[test]
    fn names_show_bindings() {
        let b = BTreeMap::from([("beta".to_string(), json!(0.1)), ("mode".to_string(), json!("fast"))]);
        assert_eq!(instance_name("policy", &b), "policy[beta=0.1,mode=fast]");
        assert_eq!(instance_name("policy", &BTreeMap::new()), "policy");
    }
}
