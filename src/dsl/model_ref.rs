//! How a pipeline names a model, in every param that takes one (`sample.pool` entries,
//! `evaluate.policy`, `dpo.base`, `sft.base`, `annotate.judge`): a `models:` name, another
//! stage's checkpoint, or a checkpoint folder. Parsed here and nowhere else, so the plan
//! (which follows stage references and hashes folders into keys) and the stages (which load or
//! call the model) read the same value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A model reference as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// `NAME` or `{ model: NAME }`: a `models:` entry, served by its provider.
    Named(String),
    /// `{ stage: NAME, output?: O }`: the checkpoint another stage produces (its output
    /// `checkpoint` unless `output` says otherwise).
    Stage { stage: String, output: Option<String> },
    /// `{ path: DIR }`: a checkpoint folder, relative to the workspace or absolute.
    Path(String),
}

/// What a reference is written with: exactly one of these, `output` only beside `stage`.
const REFERENCE_KEYS: [&str; 4] = ["model", "stage", "output", "path"];

impl ModelRef {
    /// Reads a reference from `value`; keys of a map other than the reference's own are
    /// returned for the caller to read (a pool entry's decoding params), or refused when
    /// `extra` does not list them.
    pub fn parse(value: &Value, extra: &[&str]) -> Result<(ModelRef, Map<String, Value>), String> {
        let map = match value {
            Value::String(name) => return Ok((ModelRef::Named(name.clone()), Map::new())),
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "expected a model reference — a `models:` name, `{{ stage: NAME }}` or `{{ path: DIR }}` — not a {}",
                    crate::dsl::type_name(other)
                ));
            }
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(other) => {
                    Err(format!("`{key}` must be a non-empty string, not a {}", crate::dsl::type_name(other)))
                }
            }
        };
        let (model, stage, output, path) = (text("model")?, text("stage")?, text("output")?, text("path")?);
        let reference = match (model, stage, path) {
            (Some(name), None, None) => ModelRef::Named(name),
            (None, Some(stage), None) => ModelRef::Stage { stage, output: output.clone() },
            (None, None, Some(path)) => ModelRef::Path(path),
            (None, None, None) => {
                return Err("name the model: `model` (a `models:` entry), `stage` (a stage's checkpoint) or `path` (a checkpoint folder)".into());
            }
            _ => {
                return Err(
                    "name one model: `model` (a `models:` entry), `stage` (a stage's checkpoint) or `path` (a checkpoint folder), not several".into(),
                );
            }
        };
        if output.is_some() && !matches!(reference, ModelRef::Stage { .. }) {
            return Err("`output` picks one of a stage's outputs: it goes with `stage`".into());
        }
        let rest: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !REFERENCE_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(unknown) = rest.keys().find(|k| !extra.contains(&k.as_str())) {
            let mut known: Vec<&str> = REFERENCE_KEYS.to_vec();
            known.extend_from_slice(extra);
            return Err(format!("unknown key `{unknown}` in a model reference; expected one of {}", known.join(", ")));
        }
        Ok((reference, rest))
    }

    /// The references in a param that names models: the value itself, or each entry of a
    /// list (a pool), with where each sits below `path`. Values that are not references are
    /// left for the stage to report.
    pub fn all_in(value: &Value, path: &str) -> Vec<(String, ModelRef)> {
        let one = |v: &Value, at: String| {
            ModelRef::parse(v, &[]).ok().map(|(r, _)| r).or_else(|| lenient(v)).map(|r| (at, r))
        };
        match value {
            Value::Array(items) => {
                items.iter().enumerate().filter_map(|(i, v)| one(v, format!("{path}[{i}]"))).collect()
            }
            other => one(other, path.to_string()).into_iter().collect(),
        }
    }

    /// The checkpoint a `{ stage }` reference reads, by stage and output.
    pub fn stage(&self) -> Option<(&str, Option<&str>)> {
        match self {
            ModelRef::Stage { stage, output } => Some((stage, output.as_deref())),
            _ => None,
        }
    }

    /// The folder a `{ path }` reference reads.
    pub fn path(&self) -> Option<&str> {
        match self {
            ModelRef::Path(path) => Some(path),
            _ => None,
        }
    }

    /// The reference as written in a key: a `models:` name as a string, the others as maps.
    pub fn to_value(&self) -> Value {
        match self {
            ModelRef::Named(name) => Value::String(name.clone()),
            ModelRef::Stage { stage, output } => {
                let mut map = Map::from_iter([("stage".to_string(), Value::String(stage.clone()))]);
                if let Some(output) = output {
                    map.insert("output".into(), Value::String(output.clone()));
                }
                Value::Object(map)
            }
            ModelRef::Path(path) => Value::Object(Map::from_iter([("path".to_string(), Value::String(path.clone()))])),
        }
    }
}

/// A map with extra keys (a pool entry's decoding params): its reference, for the plan to
/// follow even before the stage has checked the rest.
fn lenient(value: &Value) -> Option<ModelRef> {
    let map = value.as_object()?;
    let kept: Map<String, Value> =
        map.iter().filter(|(k, _)| REFERENCE_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    ModelRef::parse(&Value::Object(kept), &[]).ok().map(|(r, _)| r)
}

impl fmt::Display for ModelRef {
    /// How a reference is named to a user, and labels rows it produced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Named(name) => f.write_str(name),
            ModelRef::Stage { stage, output: None } => f.write_str(stage),
            ModelRef::Stage { stage, output: Some(output) } => write!(f, "{stage}.{output}"),
            ModelRef::Path(path) => f.write_str(path),
        }
    }
}

impl Serialize for ModelRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        ModelRef::parse(&value, &[]).map(|(r, _)| r).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_written_form_reads_as_its_reference() {
        let read = |v: Value| ModelRef::parse(&v, &["temperature"]).map(|(r, _)| r);
        assert_eq!(read(json!("gpt")), Ok(ModelRef::Named("gpt".into())));
        assert_eq!(read(json!({"model": "gpt"})), Ok(ModelRef::Named("gpt".into())));
        assert_eq!(read(json!({"stage": "sft"})), Ok(ModelRef::Stage { stage: "sft".into(), output: None }));
        assert_eq!(
            read(json!({"stage": "sft", "output": "adapter"})),
            Ok(ModelRef::Stage { stage: "sft".into(), output: Some("adapter".into()) })
        );
        assert_eq!(read(json!({"path": "ckpt/llava", "temperature": 0.7})), Ok(ModelRef::Path("ckpt/llava".into())));
    }

    #[test]
    fn ambiguous_or_unknown_forms_say_what_is_expected() {
        let error = |v: Value| ModelRef::parse(&v, &[]).unwrap_err();
        assert!(error(json!({"stage": "a", "path": "b"})).contains("not several"));
        assert!(error(json!({"output": "x"})).contains("name the model"));
        assert!(error(json!({"path": "b", "output": "x"})).contains("goes with `stage`"));
        assert!(error(json!({"path": "b", "temperature": 1})).contains("unknown key `temperature`"));
        assert!(error(json!(3)).contains("not a number"));
    }

    #[test]
    fn the_plan_finds_references_in_lists_and_beside_decoding_params() {
        let pool = json!(["gpt", {"stage": "sft", "temperature": 0.3}, {"path": "ckpt"}, {"init": "tiny"}]);
        let found = ModelRef::all_in(&pool, "params.pool");
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["params.pool[0]", "params.pool[1]", "params.pool[2]"]);
        assert_eq!(found[1].1.stage(), Some(("sft", None)));
        assert_eq!(found[2].1.path(), Some("ckpt"));
    }
}
