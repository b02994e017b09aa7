//! From a YAML tree to typed values: YAML converted to JSON (refusing what JSON cannot hold),
//! serde's complaints turned into issues with a key path and a suggestion.

use serde_json::{Map, Value};

use super::{Issue, PipelineErrors, SourceMap, did_you_mean};

/// Deserializes a merged tree into typed structs, turning serde's complaint into an issue
/// with a key path and, for unknown keys, a suggestion.
pub(super) fn typed<T: serde::de::DeserializeOwned>(value: Value, sources: &SourceMap) -> Result<T, PipelineErrors> {
    typed_at(value, "", sources)
}

pub(super) fn typed_at<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
    sources: &SourceMap,
) -> Result<T, PipelineErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let mut path = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner.clone(),
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        if path == "." {
            path.clear();
        }
        sources.locate_all(vec![serde_issue(path, &e.into_inner().to_string())])
    })
}

/// Rewrites serde's message for people, and adds a suggestion for unknown keys.
pub fn serde_issue(path: String, message: &str) -> Issue {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let key_path = if path.is_empty() || path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else {
            format!("{path}.{field}")
        };
        let key_path = if key_path.is_empty() { field.to_string() } else { key_path };
        let allowed =
            if candidates.is_empty() { String::new() } else { format!("; allowed keys: {}", candidates.join(", ")) };
        return Issue::new(key_path, format!("unknown key `{field}`{allowed}"))
            .with_help(did_you_mean(field, candidates));
    }
    if let Some(field) = message.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        return Issue::new(path, format!("missing required key `{field}`"));
    }
    Issue::new(path, message.replace("invalid type: ", "wrong type: "))
}

/// Converts YAML to JSON, rejecting what JSON cannot hold rather than silently changing it.
pub fn yaml_to_json(value: serde_yaml::Value, path: &str) -> Result<Value, Issue> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(num) => Value::Number(num),
                    None => {
                        return Err(Issue::new(path, format!("the number {f} is not finite; write a finite number")));
                    }
                }
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(Issue::new(
                            path,
                            format!("keys must be plain names, found a key of the form {other:?}"),
                        ));
                    }
                };
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                out.insert(key, yaml_to_json(v, &child)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => {
            return Err(Issue::new(
                path,
                format!("YAML tags like `{}` are not part of the pipeline language", tagged.tag),
            ));
        }
    })
}
