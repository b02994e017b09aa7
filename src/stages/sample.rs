//! `sample`: responses to every instruction from `per_instruction` models of a pool.
//!
//! The models for an instruction are the pool entries that rank first on a hash of (seed,
//! instruction id, entry identity) — independent of pool order, so adding a model changes only
//! the instructions where it ranks in, and every new call goes to the new model. Every call
//! goes through the call memo: a rerun sends only what is missing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::calling::{self, CallTarget, Decoding, local_def};
use super::{
    ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, key_precision, parse_params,
    precision,
};
use crate::calls::{self, CallResult, CallSpec, CallStatus, ChatRequest, ModelIdentity};
use crate::data::DataError;
use crate::data::frame::{f64_col, frame, i64_col, str_col, strings};
use crate::data::report::DataReport;
use crate::dsl::{Issue, ModelDef, ModelRef};
use crate::model::device::Precision;
use crate::providers;

pub const KIND: Kind = Kind { name: "sample", version: 2, model_params: &["pool"], stage_inputs: &[], configure };

/// A pool entry: a model reference ([`ModelRef`]: a `models:` name, `{ stage }` or
/// `{ path }`) with, in its map form, decoding params of its own.
#[derive(Debug, Clone)]
struct PoolEntry {
    model: ModelRef,
    own: Overrides,
    /// Written as a map: its overrides, even none, are part of its identity when drawing.
    map_form: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

const OVERRIDE_KEYS: [&str; 3] = ["temperature", "top_p", "max_tokens"];

impl<'de> Deserialize<'de> for PoolEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let (model, rest) = ModelRef::parse(&value, &OVERRIDE_KEYS).map_err(serde::de::Error::custom)?;
        let own = serde_json::from_value(Value::Object(rest)).map_err(serde::de::Error::custom)?;
        Ok(PoolEntry { model, own, map_form: value.is_object() })
    }
}

impl Serialize for PoolEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.map_form {
            return self.model.serialize(serializer);
        }
        let mut map = match self.model.to_value() {
            Value::Object(map) => map,
            name => Map::from_iter([("model".to_string(), name)]),
        };
        if let Value::Object(own) = canonical(&self.own) {
            map.extend(own);
        }
        Value::Object(map).serialize(serializer)
    }
}

fn default_temperature() -> f64 {
    0.7
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_tokens() -> u32 {
    512
}
fn default_per_instruction() -> usize {
    4
}
fn default_max_side() -> Option<u32> {
    Some(768)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    pool: Vec<PoolEntry>,
    #[serde(default = "default_per_instruction")]
    per_instruction: usize,
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default = "default_top_p")]
    top_p: f64,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default)]
    seed: u64,
    /// An optional system message before the instruction.
    #[serde(default)]
    system: Option<String>,
    /// Images are scaled down to this many pixels on their longer side before sending.
    #[serde(default = "default_max_side")]
    max_image_side: Option<u32>,
}

/// A resolved pool entry: its label in the responses, model, identity and decoding params.
#[derive(Debug, Clone)]
struct Member {
    label: String,
    /// The `models:` name, or for a checkpoint the input role it arrives under.
    model: String,
    /// A checkpoint's model (provider `local`) rather than a `models:` entry.
    local: bool,
    target: CallTarget,
    def: ModelDef,
    identity: ModelIdentity,
    /// Decoding params sent with its calls (the stage's, overridden by the entry's).
    params: BTreeMap<String, Value>,
    /// The entry's own overrides, which tell two entries of one model apart when drawing.
    overrides: Value,
}

struct Sample {
    params: Params,
    pool: Vec<Member>,
    /// What local pool members compute in.
    precision: Precision,
}

fn configure(params: &Value, config: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    if params.pool.is_empty() {
        return Err(Issue::new("params.pool", "the pool is empty; name at least one model"));
    }
    if params.per_instruction == 0 || params.per_instruction > params.pool.len() {
        return Err(Issue::new(
            "params.per_instruction",
            format!("must lie between 1 and the pool size ({}), not {}", params.pool.len(), params.per_instruction),
        ));
    }
    let decoding = Decoding {
        temperature: Some(params.temperature),
        top_p: Some(params.top_p),
        max_tokens: Some(params.max_tokens),
        max_image_side: params.max_image_side,
    };
    decoding.check("params")?;
    let mut pool = Vec::new();
    for (i, entry) in params.pool.iter().enumerate() {
        let at = format!("params.pool[{i}]");
        let own = &entry.own;
        Decoding { temperature: own.temperature, top_p: own.top_p, max_tokens: own.max_tokens, ..Decoding::default() }
            .check(&at)?;
        let target = CallTarget::configure(&entry.model, config.models, &at)?;
        let mut decoding = BTreeMap::from([
            ("temperature".to_string(), json!(own.temperature.unwrap_or(params.temperature))),
            ("top_p".to_string(), json!(own.top_p.unwrap_or(params.top_p))),
            ("max_tokens".to_string(), json!(own.max_tokens.unwrap_or(params.max_tokens))),
        ]);
        decoding.retain(|_, v| !v.is_null());
        let name = entry.model.to_string();
        // Only what the entry itself sets: `sft[temperature=0.3]`.
        let set: Vec<String> = [
            ("max_tokens", own.max_tokens.map(|v| json!(v))),
            ("temperature", own.temperature.map(|v| json!(v))),
            ("top_p", own.top_p.map(|v| json!(v))),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        let label = if set.is_empty() { name } else { format!("{name}[{}]", set.join(",")) };
        if pool.iter().any(|m: &Member| m.label == label) {
            return Err(Issue::new(at, format!("`{label}` is in the pool twice")));
        }
        let model = target.call_name();
        // A checkpoint's identity here stands for it in the draw; its digest joins at run time.
        let (def, identity) = match &target {
            CallTarget::Entry { def, identity, .. } => ((**def).clone(), identity.clone()),
            CallTarget::Checkpoint(_) => (local_def(), providers::identity(&model, &local_def())),
        };
        let overrides = if entry.map_form {
            json!({"temperature": own.temperature, "top_p": own.top_p, "max_tokens": own.max_tokens})
        } else {
            Value::Null
        };
        let local = target.is_local();
        pool.push(Member { label, model, local, target, def, identity, params: decoding, overrides });
    }
    let precision = precision(config, pool.iter().any(|m| m.local))?;
    Ok(Box::new(Sample { params, pool, precision }))
}

impl Sample {
    /// The pool entries an instruction gets: the first `per_instruction` by a seeded hash.
    /// Indices into the pool.
    fn draw(&self, instruction: &str) -> Vec<usize> {
        let mut ranked: Vec<(blake3::Hash, usize)> = self
            .pool
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // Identity and the entry's own overrides only: changing the stage's decoding
                // params must not change which models answer an instruction.
                let identity = json!({"identity": m.identity, "overrides": m.overrides});
                let mut h = blake3::Hasher::new();
                h.update(&self.params.seed.to_le_bytes());
                h.update(instruction.as_bytes());
                h.update(&[0]);
                h.update(identity.to_string().as_bytes());
                (h.finalize(), i)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        ranked.into_iter().take(self.params.per_instruction).map(|(_, m)| m).collect()
    }

    fn request(&self, member: &Member, prompt: &str, image: Option<&str>) -> ChatRequest {
        let messages = calls::opening(self.params.system.as_deref(), image, prompt.to_string());
        // Only a request with an image depends on how images are scaled.
        ChatRequest { messages, params: member.params.clone(), image_max_side: image.and(self.params.max_image_side) }
    }
}

impl Stage for Sample {
    fn canonical_params(&self) -> Value {
        // Models enter the key by identity (provider, model, params), never by transport.
        let mut value = canonical(&self.params);
        // A checkpoint enters by its digest, which the plan puts in place of `{ stage: … }`.
        let identities: Map<String, Value> =
            self.pool.iter().filter(|m| !m.local).map(|m| (m.label.clone(), json!(m.identity))).collect();
        value["models"] = Value::Object(identities);
        key_precision(&mut value, self.precision);
        value
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "responses".into(), table: true }, OutputDecl { name: "report".into(), table: false }]
    }

    fn calls_models(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["instructions"])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, crate::store::OutputRef>, StageError> {
        let instructions = ctx.read_table("instructions")?;
        let ids: Vec<Option<&str>> = strings(&instructions, "instructions", "id")?.iter().collect();
        let prompts: Vec<Option<&str>> = strings(&instructions, "instructions", "prompt")?.iter().collect();
        let images = ctx.stored_images(&instructions, "instructions")?;

        let pool: Vec<Member> = self.pool.iter().map(|m| resolve(ctx, m)).collect::<Result<_, _>>()?;
        // (instruction id, member, call key)
        let mut planned: Vec<(&str, &Member, String)> = Vec::new();
        let mut specs = Vec::new();
        for (row, &image) in images.iter().enumerate() {
            let (id, prompt) = calling::instruction(&ids, &prompts, row)?;
            for member in self.draw(id).into_iter().map(|i| &pool[i]) {
                let request = self.request(member, prompt, image);
                let key = calls::call_key(&member.identity, &request, 0);
                specs.push(CallSpec { key: key.clone(), model: member.model.clone(), request });
                planned.push((id, member, key));
            }
        }
        let mut report = DataReport::default();
        let results = run_pool_calls(ctx, &pool, &specs, &mut report)?;
        let mut responses = responses_table(&planned, &results, ids.len(), &mut report)?;
        Ok(BTreeMap::from([
            ("responses".to_string(), ctx.put_table(&mut responses)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}

/// A checkpoint's member with its digest as the model: in its call keys and what it loads.
fn resolve(ctx: &RunContext, member: &Member) -> Result<Member, StageError> {
    if !member.local {
        return Ok(member.clone());
    }
    let (model, def, identity) = member.target.resolve(ctx)?;
    Ok(Member { model, def, identity, ..member.clone() })
}

/// Sends (or finds in the memo) every call the pool members need.
fn run_pool_calls(
    ctx: &RunContext,
    pool: &[Member],
    specs: &[CallSpec],
    report: &mut DataReport,
) -> Result<HashMap<String, CallResult>, StageError> {
    super::calling::call_models(ctx, pool.iter().map(|m| (m.model.as_str(), &m.def)), specs, report)
}

fn responses_table(
    planned: &[(&str, &Member, String)],
    results: &HashMap<String, CallResult>,
    instructions: usize,
    report: &mut DataReport,
) -> Result<polars::prelude::DataFrame, StageError> {
    let mut rows: Vec<(&str, &str, &String, &CallResult)> = planned
        .iter()
        .map(|(id, member, key)| {
            results
                .get(key)
                .map(|r| (*id, member.label.as_str(), key, r))
                .ok_or_else(|| StageError::Internal(format!("no result for call {key}")))
        })
        .collect::<Result<_, _>>()?;
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    report.input("instructions", instructions as u64);
    for (_, _, _, r) in &rows {
        match r.status {
            CallStatus::Ok => {}
            status @ (CallStatus::Refused | CallStatus::Rejected) => report.note(status.as_str(), 1),
        }
    }
    let n = rows.len();
    let df = frame(
        n,
        vec![
            str_col("instruction_id", rows.iter().map(|r| Some(r.0))),
            str_col("model", rows.iter().map(|r| Some(r.1))),
            i64_col("sample_index", vec![Some(0); n]),
            str_col("response", rows.iter().map(|r| r.3.text.as_deref())),
            str_col("finish_reason", rows.iter().map(|r| r.3.finish_reason.as_deref())),
            i64_col("tokens_in", rows.iter().map(|r| r.3.tokens_in.map(|t| t as i64)).collect()),
            i64_col("tokens_out", rows.iter().map(|r| r.3.tokens_out.map(|t| t as i64)).collect()),
            f64_col("latency_ms", rows.iter().map(|r| Some(r.3.latency_ms as f64)).collect()),
            str_col("call_key", rows.iter().map(|r| Some(&r.2))),
            str_col("status", rows.iter().map(|r| Some(r.3.status.as_str()))),
        ],
    )
    .map_err(DataError::from)?;
    report.output("responses", n as u64);
    Ok(df)
}
