//! The YAML pipeline language: parse, `extends`, `use`, `--set`, interpolation, typed checks.
//!
//! Everything here works on plain JSON trees (`serde_json::Value`) so that merging,
//! overriding and hashing see one representation; typed structs with
//! `deny_unknown_fields` are the gate every key passes through.

mod interp;
mod merge;
mod model_ref;
mod range;
mod runtime;
mod source;
mod suggest;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

pub use interp::{Scope, resolve, type_name};
pub use model_ref::ModelRef;
pub use range::Range;
pub use runtime::{Calls, Compute, Placement, Precision, Runtime, Slurm, is_slurm_time};
pub use source::{Issue, PipelineError, PipelineErrors, SourceMap};
pub use suggest::{did_you_mean, elide, nearest, shorten};
pub use values::{serde_issue, yaml_to_json};
use values::{typed, typed_at};

/// The largest pipeline or `use:` file silkie reads: far above any real one, and a bound on
/// what a wrong path (a log, a dataset) can cost.
pub const MAX_PIPELINE_BYTES: u64 = 4 << 20;

/// The pipeline language version this build reads.
pub const LANGUAGE_VERSION: u64 = 1;

/// A pipeline after `extends`, `use`, `--set` and `${vars…}`/`${models…}` interpolation.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file as the user named it, relative to the workspace when inside it.
    pub label: String,
    pub name: String,
    pub vars: Map<String, Value>,
    pub models: BTreeMap<String, ModelDef>,
    pub stages: BTreeMap<String, StageDef>,
    /// Where each key came from, for errors found later (plan, kinds).
    pub sources: SourceMap,
}

/// A `models:` entry. Only `provider`, `model` and `params` are its identity.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// How hard this model may be called (concurrency, rate limits, retries). Never hashed.
    #[serde(default)]
    pub runtime: Runtime,
    /// A `local` model's checkpoint folder when it is one in the workspace (`{ path: DIR }`)
    /// rather than in the store; set by the stage that resolved the reference.
    #[serde(skip)]
    pub checkpoint_dir: Option<std::path::PathBuf>,
}

/// A stage as written (after merging), before matrix expansion.
#[derive(Debug, Clone)]
pub struct StageDef {
    pub name: String,
    pub kind: String,
    pub needs: Vec<Need>,
    pub params: Value,
    pub runtime: Runtime,
    pub matrix: BTreeMap<String, Vec<Value>>,
    /// Explicit role bindings: role → `stage.output`.
    pub inputs: BTreeMap<String, Need>,
    /// The `use:` file, relative to the workspace; its bytes enter the stage key.
    pub use_file: Option<PathBuf>,
}

/// `stage` or `stage.output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub stage: String,
    pub output: Option<String>,
}

impl Need {
    pub fn parse(text: &str) -> Need {
        match text.split_once('.') {
            Some((stage, output)) => Need { stage: stage.to_string(), output: Some(output.to_string()) },
            None => Need { stage: text.to_string(), output: None },
        }
    }
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.output {
            Some(o) => write!(f, "{}.{o}", self.stage),
            None => write!(f, "{}", self.stage),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    version: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    vars: Map<String, Value>,
    #[serde(default)]
    models: BTreeMap<String, ModelDef>,
    stages: BTreeMap<String, RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default = "empty_map")]
    params: Value,
    #[serde(default = "empty_map")]
    runtime: Value,
    #[serde(default)]
    matrix: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    description: Option<String>,
}

fn empty_map() -> Value {
    Value::Object(Map::new())
}

/// Where pipeline files live and how they are named in messages.
pub struct Loader<'a> {
    pub workspace: &'a Path,
}

impl Loader<'_> {
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.workspace.join(path) }
    }

    fn display(&self, path: &Path) -> PathBuf {
        path.strip_prefix(self.workspace).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
    }

    /// Reads one YAML file into a JSON tree, registering it in `sources`.
    fn read(&self, path: &Path, sources: &mut SourceMap, mount: &str) -> Result<Value, PipelineErrors> {
        let shown = self.display(path);
        let one = |e: PipelineError| PipelineErrors(vec![e]);
        let bytes = crate::files::read_regular(path, MAX_PIPELINE_BYTES)
            .map_err(|e| one(SourceMap::error_at(&shown, "", None, format!("cannot read pipeline file: {e}"))))?;
        let mut text = String::from_utf8(bytes).map_err(|e| {
            one(SourceMap::error_at(
                &shown,
                "",
                None,
                format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
            ))
        })?;
        // Editors on Windows may start a file with a byte-order mark; YAML allows one.
        if let Some(rest) = text.strip_prefix('\u{feff}') {
            text = rest.to_string();
        }
        let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
            let offset = e.location().map(|l| l.index());
            one(SourceMap::error_at(&shown, &text, offset, format!("invalid YAML: {e}")))
        })?;
        yaml.apply_merge()
            .map_err(|e| one(SourceMap::error_at(&shown, &text, None, format!("invalid YAML merge key: {e}"))))?;
        sources.add(&shown, &text, mount);
        let value = yaml_to_json(yaml, "").map_err(|issue| sources.locate_all(vec![issue]))?;
        if value.is_null() {
            return Err(one(SourceMap::error_at(
                &shown,
                &text,
                None,
                "the file is empty; expected a map with `version` and `stages`".into(),
            )));
        }
        if !value.is_object() {
            return Err(one(SourceMap::error_at(
                &shown,
                &text,
                Some(0),
                format!("expected a map at the top level, found a {}", type_name(&value)),
            )));
        }
        Ok(value)
    }

    /// Reads a pipeline file and everything it `extends`, merged, child over parent.
    fn read_with_extends(
        &self,
        path: &Path,
        sources: &mut SourceMap,
        chain: &mut Vec<PathBuf>,
    ) -> Result<Value, PipelineErrors> {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(at) = chain.iter().position(|p| *p == canonical) {
            let cycle: Vec<String> =
                chain[at..].iter().chain([&canonical]).map(|p| self.display(p).display().to_string()).collect();
            return Err(sources
                .locate_all(vec![Issue::new("extends", format!("`extends` forms a loop: {}", cycle.join(" → ")))]));
        }
        chain.push(canonical);
        let mut value = self.read(path, sources, "")?;
        let Some(parent) = value.as_object_mut().and_then(|m| m.remove("extends")) else {
            chain.pop();
            return Ok(value);
        };
        let parents = match parent {
            Value::String(p) => vec![p],
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(|v| v.as_str().map(String::from)).collect()
            }
            other => {
                return Err(sources.locate_all(vec![Issue::new(
                    "extends",
                    format!("expected a file path (or a list of them), found a {}", type_name(&other)),
                )]));
            }
        };
        let mut merged = Value::Object(Map::new());
        for parent in parents {
            let parent_path = self.resolve(Path::new(&parent));
            if !parent_path.exists() {
                return Err(sources.locate_all(vec![Issue::new(
                    "extends",
                    format!(
                        "extends `{parent}`, which does not exist (paths resolve against the workspace {})",
                        self.workspace.display()
                    ),
                )]));
            }
            if let Err(e) = crate::files::check_regular(&parent_path, MAX_PIPELINE_BYTES) {
                return Err(sources.locate_all(vec![Issue::new("extends", format!("cannot read `{parent}`: {e}"))]));
            }
            merge::deep_merge(&mut merged, self.read_with_extends(&parent_path, sources, chain)?);
        }
        merge::deep_merge(&mut merged, value);
        chain.pop();
        Ok(merged)
    }

    /// Loads, merges, overrides, type-checks and interpolates a pipeline file.
    pub fn load(&self, path: &Path, sets: &[String]) -> Result<Pipeline, PipelineErrors> {
        let full = self.resolve(path);
        let mut sources = SourceMap::default();
        let mut root = self.read_with_extends(&full, &mut sources, &mut Vec::new())?;
        let use_files = self.expand_uses(&mut root, &mut sources)?;
        for set in sets {
            merge::apply_set(&mut root, set).map_err(|i| sources.locate_all(vec![i]))?;
        }
        let raw: RawPipeline = typed(root, &sources)?;
        if raw.version != LANGUAGE_VERSION {
            return Err(sources.locate_all(vec![Issue::new(
                "version",
                format!(
                    "unsupported pipeline language version {}; this silkie reads version {LANGUAGE_VERSION}",
                    raw.version
                ),
            )]));
        }
        let mut issues = Vec::new();
        let models_json = serde_json::to_value(&raw.models).unwrap_or_default();
        let vars = interp::resolve_vars(&raw.vars).map_err(|i| sources.locate_all(vec![i]))?;
        let models_scope = Scope { vars: &vars, models: Some(&Value::Null), matrix: None, keep_escapes: false };
        let models_resolved = match resolve(&models_json, &models_scope, "models") {
            Ok(v) => v,
            Err(i) => return Err(sources.locate_all(vec![i])),
        };
        let models: BTreeMap<String, ModelDef> = typed_at(models_resolved.clone(), "models", &sources)?;
        issues.extend(models.iter().flat_map(|(name, m)| m.runtime.check(&format!("models.{name}.runtime"))));
        let scope = Scope { vars: &vars, models: Some(&models_resolved), matrix: None, keep_escapes: false };
        let mut stages = BTreeMap::new();
        for (name, stage) in raw.stages {
            let base = format!("stages.{name}");
            if !valid_stage_name(&name) {
                issues
                    .push(Issue::new(&base, format!("stage name `{name}` may hold only letters, digits, `_` and `-`")));
                continue;
            }
            match build_stage(name.clone(), stage, &scope, &base, use_files.get(&name).cloned()) {
                Ok(def) => {
                    stages.insert(name, def);
                }
                Err(mut e) => issues.append(&mut e),
            }
        }
        if stages.is_empty() && issues.is_empty() {
            issues.push(Issue::new("stages", "the pipeline has no stages"));
        }
        if !issues.is_empty() {
            return Err(sources.locate_all(issues));
        }
        let label = self.display(&full).display().to_string();
        let name =
            raw.name.unwrap_or_else(|| full.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(Pipeline { label, name, vars, models, stages, sources })
    }

    /// Replaces every stage's `use: FILE` with the file's definition, the stage merged over it.
    fn expand_uses(
        &self,
        root: &mut Value,
        sources: &mut SourceMap,
    ) -> Result<BTreeMap<String, PathBuf>, PipelineErrors> {
        let mut used = BTreeMap::new();
        let Some(stages) = root.get_mut("stages").and_then(Value::as_object_mut) else {
            return Ok(used);
        };
        for (name, stage) in stages.iter_mut() {
            let Some(obj) = stage.as_object_mut() else { continue };
            let Some(use_value) = obj.remove("use") else { continue };
            let path = format!("stages.{name}.use");
            let Some(file) = use_value.as_str() else {
                return Err(sources.locate_all(vec![Issue::new(
                    path,
                    format!("expected a path to a stage definition file, found a {}", type_name(&use_value)),
                )]));
            };
            let full = self.resolve(Path::new(file));
            let why_not = match std::fs::metadata(&full) {
                Err(_) => Some("which does not exist (paths resolve against the workspace)".to_string()),
                Ok(meta) if meta.is_dir() => Some("which is a folder; name a stage definition file in it".to_string()),
                Ok(_) => None,
            };
            if let Some(why_not) = why_not {
                return Err(sources.locate_all(vec![Issue::new(path, format!("uses `{file}`, {why_not}"))]));
            }
            let mut base = self.read(&full, sources, &format!("stages.{name}"))?;
            merge::deep_merge(&mut base, Value::Object(std::mem::take(obj)));
            *stage = base;
            used.insert(name.clone(), PathBuf::from(file));
        }
        Ok(used)
    }
}

fn interpolate(issues: &mut Vec<Issue>, scope: &Scope, value: Value, path: String) -> Value {
    match resolve(&value, scope, &path) {
        Ok(v) => v,
        Err(issue) => {
            issues.push(issue);
            value
        }
    }
}

fn valid_stage_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn build_stage(
    name: String,
    raw: RawStage,
    scope: &Scope,
    base: &str,
    use_file: Option<PathBuf>,
) -> Result<StageDef, Vec<Issue>> {
    let mut issues = Vec::new();
    let _ = raw.description;
    let kind = match raw.kind {
        Some(k) => k,
        None => {
            issues.push(
                Issue::new(base, "the stage has neither `kind` nor `use`")
                    .with_help(Some("add `kind: load` (or another kind), or `use: stages/FILE.yaml`".into())),
            );
            String::new()
        }
    };
    // Params are interpolated again once matrix values are known: escapes wait for that pass.
    let params_scope = Scope { keep_escapes: true, ..*scope };
    let params = interpolate(&mut issues, &params_scope, raw.params, format!("{base}.params"));
    if !params.is_object() {
        issues.push(Issue::new(
            format!("{base}.params"),
            format!("expected a map of parameters, found a {}", type_name(&params)),
        ));
    }
    let runtime_json = interpolate(&mut issues, scope, raw.runtime, format!("{base}.runtime"));
    let runtime = match serde_path_to_error::deserialize::<_, Runtime>(runtime_json) {
        Ok(r) => {
            issues.extend(r.check(&format!("{base}.runtime")));
            r
        }
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." { format!("{base}.runtime") } else { format!("{base}.runtime.{inner}") };
            issues.push(serde_issue(path, &e.into_inner().to_string()));
            Runtime::default()
        }
    };
    let mut needs = Vec::new();
    for (i, need) in raw.needs.iter().enumerate() {
        let text = interpolate(&mut issues, scope, Value::String(need.clone()), format!("{base}.needs[{i}]"));
        needs.push(Need::parse(text.as_str().unwrap_or(need)));
    }
    let mut matrix = BTreeMap::new();
    for (axis, values) in raw.matrix {
        let path = format!("{base}.matrix.{axis}");
        if values.is_empty() {
            issues.push(Issue::new(&path, "a matrix axis needs at least one value"));
        }
        let values: Vec<Value> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| interpolate(&mut issues, scope, v, format!("{path}[{i}]")))
            .collect();
        if let Some(bad) = values.iter().find(|v| v.is_object() || v.is_array() || v.is_null()) {
            issues.push(Issue::new(
                &path,
                format!("matrix values must be strings, numbers or booleans, found a {}", type_name(bad)),
            ));
        }
        matrix.insert(axis, values);
    }
    let inputs = raw.inputs.iter().map(|(role, addr)| (role.clone(), Need::parse(addr))).collect();
    if issues.is_empty() {
        Ok(StageDef { name, kind, needs, params, runtime, matrix, inputs, use_file })
    } else {
        Err(issues)
    }
}
