//! `annotate`: the AI judge. One call per instruction rates all its responses on every
//! aspect, as in the paper. A reply missing ratings is re-asked (`max_reasks`) with a note
//! of what is missing; what stays missing is recorded as such and counted, never dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::calling::{self, Decoding};
use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params};
use crate::calls::{self, CallResult, CallSpec, CallStatus, ChatRequest, Message, ModelIdentity, Part};
use crate::data::DataError;
use crate::data::frame::{ResponseKeys, f64_col, frame, i64_col, str_col, strings};
use crate::data::judge::{self, Judgement, PlaceholderStyle};
use crate::data::rating::{ASPECTS, aspect_id, parse_rating};
use crate::data::report::DataReport;
use crate::dsl::{Issue, ModelDef, did_you_mean};
use crate::providers;

pub const KIND: Kind = Kind { name: "annotate", version: 1, model_params: &["judge"], stage_inputs: &[], configure };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum ResponseFormat {
    /// The assessment text format of the VLFeedback template.
    #[default]
    Text,
    /// Ask for a JSON object (for judges with structured output).
    Json,
}

fn default_aspects() -> Vec<String> {
    ASPECTS.iter().map(|a| a.to_string()).collect()
}
fn default_reasks() -> u32 {
    2
}
fn default_max_tokens() -> u32 {
    2048
}
fn default_max_side() -> Option<u32> {
    Some(768)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// A `models:` name.
    judge: String,
    /// The prompt template file (its bytes are in the key).
    template: String,
    #[serde(default)]
    placeholder_style: PlaceholderStyle,
    #[serde(default = "default_aspects")]
    aspects: Vec<String>,
    #[serde(default)]
    response_format: ResponseFormat,
    #[serde(default = "default_reasks")]
    max_reasks: u32,
    /// Present responses in a seeded random order (against position bias); ratings map back.
    #[serde(default)]
    shuffle_order: bool,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    temperature: f64,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default = "default_max_side")]
    max_image_side: Option<u32>,
    #[serde(default)]
    system: Option<String>,
}

struct Annotate {
    params: Params,
    def: ModelDef,
    identity: ModelIdentity,
}

fn configure(params: &Value, config: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    let Some(def) = config.models.get(&params.judge) else {
        let names = config.models.keys().map(String::as_str);
        return Err(Issue::new("params.judge", format!("`{}` is not in `models:`", params.judge))
            .with_help(did_you_mean(&params.judge, names)));
    };
    for (i, aspect) in params.aspects.iter().enumerate() {
        if aspect_id(aspect) != Some(aspect.as_str()) {
            return Err(Issue::new(
                format!("params.aspects[{i}]"),
                format!("`{aspect}` is not an aspect id; known: {}", ASPECTS.join(", ")),
            )
            .with_help(did_you_mean(aspect, ASPECTS)));
        }
    }
    if params.aspects.is_empty() {
        return Err(Issue::new("params.aspects", "name at least one aspect"));
    }
    let decoding = Decoding {
        temperature: Some(params.temperature),
        max_tokens: Some(params.max_tokens),
        max_image_side: params.max_image_side,
        ..Decoding::default()
    };
    decoding.check("params")?;
    let identity = providers::identity(&params.judge, def);
    Ok(Box::new(Annotate { def: def.clone(), identity, params }))
}

/// One instruction to judge: its prompt, image and responses in the order presented.
struct Case {
    /// Rows of the responses table, in presentation order.
    shown: Vec<usize>,
    request: ChatRequest,
}

impl Annotate {
    fn first_request(
        &self,
        template: &str,
        prompt: &str,
        image: Option<&str>,
        texts: &[&str],
    ) -> Result<ChatRequest, judge::TemplateError> {
        let mut text = judge::render(template, self.params.placeholder_style, prompt, texts)?;
        if self.params.response_format == ResponseFormat::Json {
            text.push_str(&format!(
                "\n\nReply with a JSON object only: for each of {}, a list with one {{\"rating\": 1-5, \"rationale\": \"...\"}} per text, in the texts' order.",
                self.params.aspects.join(", ")
            ));
        }
        let messages = calls::opening(self.params.system.as_deref(), image, text);
        let mut params = BTreeMap::from([
            ("temperature".to_string(), json!(self.params.temperature)),
            ("max_tokens".to_string(), json!(self.params.max_tokens)),
        ]);
        if self.params.response_format == ResponseFormat::Json {
            params.insert("response_format".into(), self.json_schema(texts.len()));
        }
        // Only a request with an image depends on how images are scaled.
        let image_max_side = image.and(self.params.max_image_side);
        Ok(ChatRequest { messages, params, image_max_side })
    }

    /// Structured output: exactly one rating per text for every aspect.
    fn json_schema(&self, texts: usize) -> Value {
        let item = json!({
            "type": "object",
            "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5}, "rationale": {"type": "string"}},
            "required": ["rating", "rationale"],
            "additionalProperties": false,
        });
        let list = json!({"type": "array", "items": item, "minItems": texts, "maxItems": texts});
        let properties: serde_json::Map<String, Value> =
            self.params.aspects.iter().map(|a| (a.clone(), list.clone())).collect();
        json!({
            "type": "json_schema",
            "json_schema": {
                "name": "assessment",
                "strict": true,
                "schema": {"type": "object", "properties": properties, "required": self.params.aspects, "additionalProperties": false},
            },
        })
    }

    /// The request that asks again, quoting the reply and saying what it lacked.
    fn reask(request: &ChatRequest, reply: &str, missing: &[(String, usize)]) -> ChatRequest {
        let lacking: Vec<String> = missing.iter().map(|(a, i)| format!("{} of Text {i}", heading(a))).collect();
        let mut next = request.clone();
        next.messages.push(Message { role: "assistant".into(), content: vec![Part::Text { text: reply.to_string() }] });
        next.messages.push(Message {
            role: "user".into(),
            content: vec![Part::Text {
                text: format!(
                    "Your assessment lacks a rating for: {}. Reply again with the complete assessment, every aspect and every text, in the required format.",
                    lacking.join(", ")
                ),
            }],
        });
        next
    }

    /// Presentation order of an instruction's responses: as sorted, or seeded-shuffled.
    fn order(&self, id: &str, rows: &mut [usize], keys: &ResponseKeys) {
        if self.params.shuffle_order {
            rows.sort_by_key(|&r| {
                let (_, model, sample) = keys.key(r);
                blake3::hash(format!("{}\0{id}\0{model}\0{sample}", self.params.seed).as_bytes()).to_hex().to_string()
            });
        }
    }
}

/// `visual_faithfulness` → `Visual Faithfulness`, as the template's headings say it.
fn heading(aspect: &str) -> &'static str {
    match aspect {
        "helpfulness" => "Helpfulness",
        "visual_faithfulness" => "Visual Faithfulness",
        _ => "Ethical Considerations",
    }
}

impl Stage for Annotate {
    fn canonical_params(&self) -> Value {
        let mut value = canonical(&self.params);
        value["judge_identity"] = json!(self.identity);
        value
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "ratings".into(), table: true }, OutputDecl { name: "report".into(), table: false }]
    }

    fn calls_models(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["instructions", "responses"])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        vec![PathBuf::from(&self.params.template)]
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, crate::store::OutputRef>, StageError> {
        let template = std::fs::read_to_string(ctx.workspace.join(&self.params.template))
            .map_err(StageError::io(&self.params.template))?;
        let instructions = ctx.read_table("instructions")?;
        let responses = ctx.read_table("responses")?;
        let ids: Vec<Option<&str>> = strings(&instructions, "instructions", "id")?.iter().collect();
        let prompts: Vec<Option<&str>> = strings(&instructions, "instructions", "prompt")?.iter().collect();
        let images = ctx.stored_images(&instructions, "instructions")?;
        let keys = ResponseKeys::read(&responses, "responses")?;
        let texts: Vec<Option<&str>> = strings(&responses, "responses", "response")?.iter().collect();

        let mut report = DataReport::default();
        report.input("instructions", ids.len() as u64);
        report.input("responses", keys.len() as u64);
        let mut by_instruction: HashMap<&str, Vec<usize>> = HashMap::new();
        for (row, text) in texts.iter().enumerate() {
            if text.is_none() {
                report.note("response_without_text", 1);
                continue;
            }
            by_instruction.entry(keys.instruction[row]).or_default().push(row);
        }
        let mut cases = Vec::new();
        for (row, &image) in images.iter().enumerate() {
            let (id, prompt) = calling::instruction(&ids, &prompts, row)?;
            let Some(mut shown) = by_instruction.remove(id) else { continue };
            shown.sort_by_key(|&r| keys.key(r));
            self.order(id, &mut shown, &keys);
            let shown_texts: Vec<&str> = shown.iter().map(|&r| texts[r].unwrap_or_default()).collect();
            let request = self
                .first_request(&template, prompt, image, &shown_texts)
                .map_err(|source| DataError::Template { file: self.params.template.clone(), source })?;
            cases.push(Case { shown, request });
        }
        report.drop("response_of_unknown_instruction", by_instruction.values().map(|v| v.len() as u64).sum());

        let (verdicts, reasks) = self.judge_all(ctx, &cases, &mut report)?;
        report.note("reasks", reasks);
        let mut ratings = self.ratings_table(&cases, &verdicts, &keys, &mut report)?;
        report.output("ratings", ratings.height() as u64);
        Ok(BTreeMap::from([
            ("ratings".to_string(), ctx.put_table(&mut ratings)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}

/// Adds a re-ask's ratings to what earlier replies gave: a rating once found is kept (a
/// re-ask that leaves it out, or is refused, does not lose it).
fn merge(earlier: Option<Verdict>, judgement: Judgement, call_key: &str, status: CallStatus) -> Verdict {
    match earlier {
        None => Verdict { judgement, call_key: call_key.to_string(), status },
        Some(mut verdict) => {
            let found_before = !verdict.judgement.is_empty();
            for (key, judged) in judgement {
                verdict.judgement.entry(key).or_insert(judged);
            }
            verdict.call_key = call_key.to_string();
            // What was rated stays rated; a refusal only counts when nothing was.
            if !found_before {
                verdict.status = status;
            }
            verdict
        }
    }
}

/// One row of the ratings table, before it is a table.
struct RatingRow<'a> {
    /// Row of the responses table.
    response: usize,
    /// Index into the aspects.
    slot: usize,
    text: Option<String>,
    rationale: Option<String>,
    status: &'static str,
    call_key: &'a str,
}

/// The judge's last word on a case: its parsed ratings, the call that gave them, and the
/// call's status.
struct Verdict {
    judgement: Judgement,
    call_key: String,
    status: CallStatus,
}

impl Annotate {
    /// Asks the judge about every case, re-asking incomplete replies up to `max_reasks` times.
    fn judge_all(
        &self,
        ctx: &RunContext,
        cases: &[Case],
        report: &mut DataReport,
    ) -> Result<(Vec<Verdict>, u64), StageError> {
        let mut requests: Vec<ChatRequest> = cases.iter().map(|c| c.request.clone()).collect();
        let mut verdicts: Vec<Option<Verdict>> = (0..cases.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..cases.len()).collect();
        let mut reasks = 0;
        for round in 0..=self.params.max_reasks {
            let specs: Vec<CallSpec> = pending
                .iter()
                .map(|&i| CallSpec {
                    key: calls::call_key(&self.identity, &requests[i], 0),
                    model: self.params.judge.clone(),
                    request: requests[i].clone(),
                })
                .collect();
            let results: HashMap<String, CallResult> =
                super::calling::call_models(ctx, [(self.params.judge.as_str(), &self.def)], &specs, report)?;
            let mut next = Vec::new();
            for (spec, &i) in specs.iter().zip(&pending) {
                let result = &results[&spec.key];
                let reply = result.text.clone().unwrap_or_default();
                let read = judge::read_reply(&reply);
                report.note("repeated_rating_in_reply", read.repeated);
                if read.numbered_from_zero > 0 {
                    tracing::warn!("{}: the judge numbered its texts from 0; read in order", ctx.instance);
                    report.note("reply_numbered_from_zero", 1);
                }
                let verdict = merge(verdicts[i].take(), read.judgement, &spec.key, result.status);
                let missing = judge::missing(&verdict.judgement, &self.params.aspects, cases[i].shown.len());
                verdicts[i] = Some(verdict);
                if result.status == CallStatus::Ok && !missing.is_empty() && round < self.params.max_reasks {
                    requests[i] = Self::reask(&requests[i], &reply, &missing);
                    next.push(i);
                    reasks += 1;
                }
            }
            pending = next;
            if pending.is_empty() {
                break;
            }
        }
        Ok((verdicts.into_iter().map(|v| v.expect("every case is judged at least once")).collect(), reasks))
    }

    fn ratings_table(
        &self,
        cases: &[Case],
        verdicts: &[Verdict],
        keys: &ResponseKeys,
        report: &mut DataReport,
    ) -> Result<polars::prelude::DataFrame, DataError> {
        let mut rows: Vec<RatingRow> = Vec::new();
        for (case, verdict) in cases.iter().zip(verdicts) {
            for (shown_at, &response) in case.shown.iter().enumerate() {
                for (slot, aspect) in self.params.aspects.iter().enumerate() {
                    let judged = verdict.judgement.get(&(aspect.clone(), shown_at + 1));
                    let status = match (verdict.status, judged) {
                        (status @ (CallStatus::Refused | CallStatus::Rejected), _) => status.as_str(),
                        (_, None) => "missing",
                        (_, Some(j)) if judge::rating_value(&j.rating).is_some() => "ok",
                        (_, Some(_)) => "unparseable",
                    };
                    if status != "ok" {
                        report.note(&format!("{status}_rating"), 1);
                    }
                    if judged.and_then(|j| parse_rating(&j.rating)).is_some_and(|v| !judge::RATING_SCALE.contains(&v)) {
                        report.note("out_of_range_rating", 1);
                    }
                    rows.push(RatingRow {
                        response,
                        slot,
                        text: judged.map(|j| j.rating.clone()),
                        rationale: judged.map(|j| j.rationale.clone()),
                        status,
                        call_key: &verdict.call_key,
                    });
                }
            }
        }
        rows.sort_by(|a, b| (keys.key(a.response), a.slot).cmp(&(keys.key(b.response), b.slot)));
        let n = rows.len();
        frame(
            n,
            vec![
                str_col("instruction_id", rows.iter().map(|r| Some(&keys.instruction[r.response]))),
                str_col("model", rows.iter().map(|r| Some(&keys.model[r.response]))),
                i64_col("sample_index", rows.iter().map(|r| Some(keys.sample[r.response])).collect()),
                str_col("aspect", rows.iter().map(|r| Some(&self.params.aspects[r.slot]))),
                f64_col("rating", rows.iter().map(|r| r.text.as_deref().and_then(judge::rating_value)).collect()),
                i64_col("position", rows.iter().map(|r| Some(r.slot as i64)).collect()),
                str_col("rating_text", rows.iter().map(|r| r.text.as_deref())),
                str_col("rationale", rows.iter().map(|r| r.rationale.as_deref())),
                str_col("status", rows.iter().map(|r| Some(r.status))),
                str_col("judge", std::iter::repeat_n(Some(&self.params.judge), n)),
                str_col("call_key", rows.iter().map(|r| Some(r.call_key))),
            ],
        )
        .map_err(DataError::from)
    }
}
