//! `${vars.x}`, `${matrix.x}` and `${models.m.field}` interpolation.
//!
//! A string that is exactly one reference takes the referenced value with its type
//! (a number stays a number); references inside longer strings are spliced as text.
//! `$${` writes a literal `${`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::source::Issue;
use super::suggest::nearest;

/// The values references may point at.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub vars: &'a Map<String, Value>,
    /// `None` while models are not known yet (resolving `vars`): `${models.…}` is left in place.
    pub models: Option<&'a Value>,
    /// `None` while matrix values are not known yet: `${matrix.…}` is then left in place.
    pub matrix: Option<&'a BTreeMap<String, Value>>,
    /// Leave `$${` escapes for a later pass (values that are interpolated twice).
    pub keep_escapes: bool,
}

/// Resolves every reference in `value`; `path` names where it sits, for errors.
pub fn resolve(value: &Value, scope: &Scope, path: &str) -> Result<Value, Issue> {
    match value {
        Value::String(s) => resolve_str(s, scope, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| resolve(v, scope, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), resolve(v, scope, &join(path, k))?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// `vars` with the references between them resolved, each var after those it names, so
/// `a: ${vars.b}` with `b: ${vars.c}` gives `a` the value of `c`. A loop is refused with
/// its chain. Matrix and model references are left for the passes that know them.
pub fn resolve_vars(vars: &Map<String, Value>) -> Result<Map<String, Value>, Issue> {
    let mut resolved = Map::new();
    let mut chain = Vec::new();
    for name in vars.keys() {
        resolve_var(name, vars, &mut resolved, &mut chain)?;
    }
    Ok(resolved)
}

fn resolve_var(
    name: &str,
    vars: &Map<String, Value>,
    resolved: &mut Map<String, Value>,
    chain: &mut Vec<String>,
) -> Result<(), Issue> {
    if resolved.contains_key(name) {
        return Ok(());
    }
    let path = format!("vars.{name}");
    if let Some(at) = chain.iter().position(|n| n == name) {
        let shown: Vec<&str> = chain[at..].iter().map(String::as_str).chain([name]).collect();
        return Err(Issue::new(path, format!("the vars name each other in a loop: {}", shown.join(" → "))));
    }
    let value = &vars[name];
    chain.push(name.to_string());
    for named in var_references(value, &path)? {
        if vars.contains_key(named.as_str()) {
            resolve_var(&named, vars, resolved, chain)?;
        }
    }
    chain.pop();
    // Escapes stay for the passes after this one: a var's text is interpolated again where it is used.
    let scope = Scope { vars: resolved, models: None, matrix: None, keep_escapes: true };
    let value = resolve(value, &scope, &path)?;
    resolved.insert(name.to_string(), value);
    Ok(())
}

/// The names of the vars a value refers to (`${vars.NAME}`), in order.
fn var_references(value: &Value, path: &str) -> Result<Vec<String>, Issue> {
    let mut names = Vec::new();
    match value {
        Value::String(s) => {
            for piece in split(s, path, true)? {
                if let Piece::Reference(reference) = piece
                    && let Some(name) = reference.strip_prefix("vars.")
                {
                    names.push(name.to_string());
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                names.extend(var_references(item, path)?);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                names.extend(var_references(item, &join(path, key))?);
            }
        }
        _ => {}
    }
    Ok(names)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

enum Piece<'s> {
    Text(String),
    Reference(&'s str),
}

fn split<'s>(s: &'s str, path: &str, keep_escapes: bool) -> Result<Vec<Piece<'s>>, Issue> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str(if keep_escapes { "$${" } else { "${" });
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(Issue::new(path, format!("unterminated `${{` in \"{s}\""))
                    .with_help(Some("close the reference with `}`, or write `$${` for a literal `${`".into())));
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Reference(after[..end].trim()));
            rest = &after[end + 1..];
        } else {
            text.push('$');
            rest = &tail[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn resolve_str(s: &str, scope: &Scope, path: &str) -> Result<Value, Issue> {
    if !s.contains('$') {
        return Ok(Value::String(s.to_string()));
    }
    let pieces = split(s, path, scope.keep_escapes)?;
    if let [Piece::Reference(reference)] = pieces.as_slice() {
        return Ok(lookup(reference, scope, path)?.unwrap_or_else(|| Value::String(s.to_string())));
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Reference(reference) => match lookup(reference, scope, path)? {
                None => {
                    out.push_str("${");
                    out.push_str(reference);
                    out.push('}');
                }
                Some(Value::String(v)) => out.push_str(&v),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                Some(v) => {
                    return Err(Issue::new(
                        path,
                        format!(
                            "`${{{reference}}}` is a {} and cannot be spliced into the text \"{s}\"",
                            type_name(&v)
                        ),
                    )
                    .with_help(Some("use the reference as the whole value to keep its type".into())));
                }
            },
        }
    }
    Ok(Value::String(out))
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// `Ok(None)` means "a matrix (or model) reference, not known yet".
fn lookup(reference: &str, scope: &Scope, path: &str) -> Result<Option<Value>, Issue> {
    let parts: Vec<&str> = reference.split('.').collect();
    let unknown = |what: &str, name: &str, candidates: Vec<&str>| {
        Issue::new(path, format!("`${{{reference}}}`: there is no {what} `{name}`"))
            .with_help(nearest(name, candidates.iter().copied()).map(|n| format!("did you mean `{n}`?")))
    };
    match parts.as_slice() {
        ["vars", name] => match scope.vars.get(*name) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(unknown("var", name, scope.vars.keys().map(String::as_str).collect())),
        },
        ["matrix", name] => match scope.matrix {
            None => Ok(None),
            Some(m) => match m.get(*name) {
                Some(v) => Ok(Some(v.clone())),
                None if m.is_empty() => Err(Issue::new(
                    path,
                    format!(
                        "`${{{reference}}}` is used, but this stage has no matrix (neither its own nor from a stage it needs)"
                    ),
                )),
                None => Err(unknown("matrix axis", name, m.keys().map(String::as_str).collect())),
            },
        },
        ["models", _, fields @ ..] if !fields.is_empty() && scope.models.is_none() => Ok(None),
        ["models", model, fields @ ..] if !fields.is_empty() => {
            let models = scope.models.unwrap_or(&Value::Null);
            let Some(mut node) = models.get(*model) else {
                let names = models.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
                return Err(unknown("model", model, names));
            };
            for field in fields {
                node = match node.get(*field) {
                    Some(v) => v,
                    None => {
                        let names =
                            node.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
                        return Err(unknown(&format!("field in model `{model}` named"), field, names));
                    }
                };
            }
            Ok(Some(node.clone()))
        }
        _ => Err(Issue::new(path, format!("`${{{reference}}}` is not a reference silkie knows"))
            .with_help(Some("write ${vars.NAME}, ${matrix.AXIS} or ${models.MODEL.FIELD}".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_with<'a>(
        vars: &'a Map<String, Value>,
        models: &'a Value,
        matrix: Option<&'a BTreeMap<String, Value>>,
    ) -> Scope<'a> {
        Scope { vars, models: Some(models), matrix, keep_escapes: false }
    }

    #[test]
    fn whole_reference_keeps_type_and_splices_text() {
        let vars = json!({"seed": 42, "dir": "data"}).as_object().unwrap().clone();
        let models = json!({"judge": {"model": "gpt-4v"}});
        let s = scope_with(&vars, &models, None);
        assert_eq!(resolve(&json!("${vars.seed}"), &s, "x").unwrap(), json!(42));
        assert_eq!(resolve(&json!("${vars.dir}/a-${vars.seed}"), &s, "x").unwrap(), json!("data/a-42"));
        assert_eq!(resolve(&json!("${models.judge.model}"), &s, "x").unwrap(), json!("gpt-4v"));
        assert_eq!(resolve(&json!("$${vars.seed}"), &s, "x").unwrap(), json!("${vars.seed}"));
        let first_pass = Scope { keep_escapes: true, ..scope_with(&vars, &models, None) };
        let once = resolve(&json!("echo $${HOME} ${vars.seed}"), &first_pass, "x").unwrap();
        assert_eq!(once, json!("echo $${HOME} 42"));
        assert_eq!(resolve(&once, &s, "x").unwrap(), json!("echo ${HOME} 42"));
        assert_eq!(resolve(&json!("cost $5"), &s, "x").unwrap(), json!("cost $5"));
        assert_eq!(resolve(&json!("${matrix.beta}"), &s, "x").unwrap(), json!("${matrix.beta}"));
    }

    #[test]
    fn errors_name_the_reference_and_suggest() {
        let vars = json!({"seed": 42}).as_object().unwrap().clone();
        let models = json!({});
        let s = scope_with(&vars, &models, None);
        let e = resolve(&json!("${vars.sed}"), &s, "stages.a.params.seed").unwrap_err();
        assert_eq!(e.path, "stages.a.params.seed");
        assert_eq!(e.help.as_deref(), Some("did you mean `seed`?"));
        assert!(resolve(&json!("${vars.seed"), &s, "p").is_err());
        assert!(resolve(&json!("${env.HOME}"), &s, "p").is_err());
        let matrix = BTreeMap::from([("beta".to_string(), json!(0.1))]);
        let s = scope_with(&vars, &models, Some(&matrix));
        assert_eq!(resolve(&json!("${matrix.beta}"), &s, "p").unwrap(), json!(0.1));
        assert!(resolve(&json!("${matrix.lr}"), &s, "p").is_err());
    }

    #[test]
    fn vars_resolve_through_vars_and_loops_name_their_chain() {
        let vars = json!({"a": "${vars.b}/x", "b": "${vars.c}", "c": 7, "d": ["${vars.a}", "$${vars.c}"], "m": "${matrix.seed}-${models.j.model}"});
        let resolved = resolve_vars(vars.as_object().unwrap()).unwrap();
        assert_eq!(resolved["a"], json!("7/x"));
        assert_eq!(resolved["b"], json!(7));
        assert_eq!(resolved["d"], json!(["7/x", "$${vars.c}"]));
        assert_eq!(resolved["m"], json!("${matrix.seed}-${models.j.model}"));
        let looped = json!({"a": "${vars.b}", "b": "x-${vars.c}", "c": "${vars.a}"});
        let e = resolve_vars(looped.as_object().unwrap()).unwrap_err();
        assert_eq!(e.path, "vars.a");
        assert_eq!(e.message, "the vars name each other in a loop: a → b → c → a");
        let unknown = json!({"a": "${vars.nope}"});
        assert!(resolve_vars(unknown.as_object().unwrap()).unwrap_err().message.contains("no var `nope`"));
    }
}
