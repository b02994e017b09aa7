//! Deep merge (`extends`, `use`) and `--set` overrides on plain JSON trees.

use serde_json::{Map, Value};

use super::source::Issue;
use super::suggest::did_you_mean;

/// Merges `over` into `base`: maps merge key by key, lists and scalars replace.
pub fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => deep_merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Applies one `--set a.b.c=value` override; the value is read as a YAML scalar or flow value.
pub fn apply_set(root: &mut Value, assignment: &str) -> Result<(), Issue> {
    let Some((path, raw)) = assignment.split_once('=') else {
        return Err(Issue::new("", format!("--set {assignment}: expected KEY.PATH=VALUE")));
    };
    let mut keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(Issue::new("", format!("--set {assignment}: the key path `{path}` has an empty part")));
    }
    let stage_names: Vec<&str> = root
        .get("stages")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    // `STAGE.params.x` is short for `stages.STAGE.params.x`.
    if !matches!(keys[0], "vars" | "models" | "stages" | "name") {
        if !stage_names.contains(&keys[0]) {
            let candidates = stage_names.iter().copied().chain(["vars", "models", "stages", "name"]);
            return Err(Issue::new(
                "",
                format!(
                    "--set {assignment}: `{}` is not a stage of this pipeline, nor vars, models, stages or name",
                    keys[0]
                ),
            )
            .with_help(did_you_mean(keys[0], candidates)));
        }
        keys.insert(0, "stages");
    }
    if keys[0] == "stages" && keys.len() > 1 && !stage_names.contains(&keys[1]) {
        return Err(Issue::new("", format!("--set {assignment}: `{}` is not a stage of this pipeline", keys[1]))
            .with_help(did_you_mean(keys[1], stage_names.iter().copied())));
    }
    let path = &keys.join(".");
    let path = path.as_str();
    let value: Value = match serde_yaml::from_str::<serde_yaml::Value>(raw) {
        Ok(v) => super::yaml_to_json(v, path)?,
        Err(e) => return Err(Issue::new(path, format!("--set value `{raw}` is not valid YAML: {e}"))),
    };
    let mut node = root;
    for key in &keys[..keys.len() - 1] {
        if !node.is_object() {
            return Err(Issue::new(path, format!("--set {assignment}: `{key}` is inside a value that is not a map")));
        }
        node = node
            .as_object_mut()
            .map(|m| m.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new())))
            .expect("checked to be an object above");
    }
    match node.as_object_mut() {
        Some(map) => {
            map.insert(keys[keys.len() - 1].to_string(), value);
            Ok(())
        }
        None => Err(Issue::new(path, format!("--set {assignment}: the parent of the last key is not a map"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_lists_replace() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1});
        deep_merge(&mut base, json!({"a": {"y": [3], "z": true}}));
        assert_eq!(base, json!({"a": {"x": 1, "y": [3], "z": true}, "b": 1}));
    }

    #[test]
    fn set_keeps_types() {
        let mut root = json!({"stages": {"p": {"params": {"beta": 0.1}}}});
        apply_set(&mut root, "stages.p.params.beta=0.2").unwrap();
        apply_set(&mut root, "stages.p.params.name=abc").unwrap();
        assert_eq!(root["stages"]["p"]["params"], json!({"beta": 0.2, "name": "abc"}));
        assert!(apply_set(&mut root, "oops").is_err());
        assert!(apply_set(&mut root, "foo.x=1").is_err());
        apply_set(&mut root, "p.params.beta=0.3").unwrap();
        assert_eq!(root["stages"]["p"]["params"]["beta"], json!(0.3));
        let err = apply_set(&mut root, "stages.q.params.beta=1").unwrap_err();
        assert_eq!(err.help.as_deref(), Some("did you mean `p`?"));
    }
}
