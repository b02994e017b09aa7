//! `evaluate`: runs a policy over a benchmark and scores it (DESIGN §7). The policy is a model
//! reference — a stage's checkpoint (`{ stage: NAME }`, generated in-process by provider
//! `local`) or a `models:` entry — and every answer goes through the call memo, so scoring
//! again never generates again. `benchmark: mme` reads questions in MME's results layout and
//! scores them with the official rules (`categories` maps subtasks to totals, for other
//! benchmarks in that layout); `mmhal` reads MMHal-Bench's JSON and has a `judge` rate every
//! answer 0–6. `baseline: STAGE` (another evaluate stage) adds its values and the relative
//! change. Outputs `predictions` and `results`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::calling::{call_models, checkpoint_model};
use super::{Config, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, model_role, parse_params};
use crate::calls::{self, CallResult, CallSpec, CallStatus, ChatRequest, ModelIdentity};
use crate::data::frame::{frame, str_col};
use crate::data::report::DataReport;
use crate::dsl::{Issue, ModelDef, did_you_mean};
use crate::eval::mme::{self, Categories, Line};
use crate::eval::mmhal::{self, Question};
use crate::eval::results::{self, Metric};
use crate::providers;

pub const KIND: Kind = Kind {
    name: "evaluate",
    version: 1,
    model_params: &["policy"],
    stage_inputs: &[("baseline", "results")],
    configure,
};

/// A model reference: a `models:` name, or a stage's checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ModelRef {
    Named(String),
    Checkpoint(CheckpointRef),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRef {
    stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Benchmark {
    Mme,
    Mmhal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryParam {
    name: String,
    subtasks: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    policy: ModelRef,
    benchmark: Benchmark,
    /// mme: a directory of `<subtask>.txt` question files; mmhal: the benchmark's JSON file.
    data: String,
    /// Where the images are (default: beside `data`).
    #[serde(default)]
    images: Option<String>,
    /// mme: subtask → total map, in summing order (default: MME's own).
    #[serde(default)]
    categories: Option<Vec<CategoryParam>>,
    /// mmhal: the judge, a `models:` name.
    #[serde(default)]
    judge: Option<String>,
    /// mmhal: the judge's prompt (`{image_content}`, `{question}`, `{gt_answer}`, `{model_answer}`).
    #[serde(default)]
    judge_template: Option<String>,
    #[serde(default)]
    temperature: f64,
    /// Longest answer (default 16 for mme, 256 for mmhal).
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default = "default_max_side")]
    max_image_side: Option<u32>,
    /// Another evaluate stage whose results this one is compared with.
    #[serde(default)]
    baseline: Option<String>,
}

fn default_max_side() -> Option<u32> {
    Some(768)
}

/// The judge as configured: its name, definition and identity.
struct Judge {
    name: String,
    def: ModelDef,
    identity: ModelIdentity,
}

struct Evaluate {
    params: Params,
    /// The policy when it is a `models:` entry (a checkpoint resolves at run time).
    named_policy: Option<(ModelDef, ModelIdentity)>,
    judge: Option<Judge>,
    categories: Categories,
}

fn model_entry(config: &Config, name: &str, path: &str) -> Result<(ModelDef, ModelIdentity), Issue> {
    let Some(def) = config.models.get(name) else {
        return Err(Issue::new(path, format!("`{name}` is not in `models:`"))
            .with_help(did_you_mean(name, config.models.keys().map(String::as_str))));
    };
    Ok((def.clone(), providers::identity(name, def)))
}

fn configure(params: &Value, config: &Config) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    let named_policy = match &params.policy {
        ModelRef::Named(name) => Some(model_entry(config, name, "params.policy")?),
        ModelRef::Checkpoint(_) => None,
    };
    let judge = match (&params.judge, params.benchmark) {
        (Some(name), Benchmark::Mmhal) => {
            let (def, identity) = model_entry(config, name, "params.judge")?;
            Some(Judge { name: name.clone(), def, identity })
        }
        (None, Benchmark::Mmhal) => {
            return Err(Issue::new("params.judge", "mmhal needs a judge: the `models:` entry that rates answers"));
        }
        (Some(_), Benchmark::Mme) => {
            return Err(Issue::new("params.judge", "mme is scored by its rules, not by a judge"));
        }
        (None, Benchmark::Mme) => None,
    };
    let categories = match &params.categories {
        Some(list) => {
            if list.is_empty() || list.iter().any(|c| c.subtasks.is_empty()) {
                return Err(Issue::new("params.categories", "every category needs at least one subtask"));
            }
            Categories(list.iter().map(|c| (c.name.clone(), c.subtasks.clone())).collect())
        }
        None => Categories::official(),
    };
    if params.categories.is_some() && params.benchmark != Benchmark::Mme {
        return Err(Issue::new("params.categories", "only mme-layout benchmarks have subtask categories"));
    }
    Ok(Box::new(Evaluate { params, named_policy, judge, categories }))
}

/// One question put to the policy.
struct Item {
    prompt: String,
    image: Option<String>,
}

impl Evaluate {
    fn images_dir(&self) -> PathBuf {
        let data = PathBuf::from(&self.params.data);
        match (&self.params.images, self.params.benchmark) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Benchmark::Mme) => data,
            (None, Benchmark::Mmhal) => data.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn max_tokens(&self) -> u32 {
        self.params.max_tokens.unwrap_or(match self.params.benchmark {
            Benchmark::Mme => 16,
            Benchmark::Mmhal => 256,
        })
    }

    /// The policy's definition and identity: a `models:` entry, or the referenced checkpoint.
    fn policy(&self, ctx: &RunContext) -> Result<(String, ModelDef, ModelIdentity), StageError> {
        match (&self.params.policy, &self.named_policy) {
            (ModelRef::Named(name), Some((def, identity))) => Ok((name.clone(), def.clone(), identity.clone())),
            (ModelRef::Checkpoint(r), _) => {
                let role = model_role(&r.stage, r.output.as_deref());
                let (def, identity) = checkpoint_model(ctx, &role)?;
                Ok((role, def, identity))
            }
            (ModelRef::Named(name), None) => Err(StageError::Failed(format!("internal: `{name}` was not resolved"))),
        }
    }

    /// Stores an image file and returns its digest.
    fn store_image(&self, ctx: &RunContext, candidates: &[PathBuf]) -> Result<String, StageError> {
        let found = candidates.iter().map(|c| ctx.workspace.join(c)).find(|p| p.is_file());
        let Some(path) = found else {
            let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            return Err(StageError::Failed(format!("image not found (looked at {})", tried.join(", "))));
        };
        Ok(ctx.store.put_file(&path)?.0)
    }

    /// Answers to `items` from the policy, in order (through the memo).
    fn answer(
        &self,
        ctx: &RunContext,
        items: &[Item],
        report: &mut DataReport,
    ) -> Result<Vec<(String, CallResult)>, StageError> {
        let (name, def, identity) = self.policy(ctx)?;
        let decoding = BTreeMap::from([
            ("temperature".to_string(), json!(self.params.temperature)),
            ("max_tokens".to_string(), json!(self.max_tokens())),
        ]);
        let specs: Vec<CallSpec> = items
            .iter()
            .map(|item| {
                let messages =
                    calls::opening(self.params.system.as_deref(), item.image.as_deref(), item.prompt.clone());
                let request = ChatRequest {
                    messages,
                    params: decoding.clone(),
                    image_max_side: item.image.as_ref().and(self.params.max_image_side),
                };
                CallSpec { key: calls::call_key(&identity, &request, 0), model: name.clone(), request }
            })
            .collect();
        let results = call_models(ctx, [(name.as_str(), &def)], &specs, report)?;
        keyed(&specs, &results)
    }

    fn run_mme(
        &self,
        ctx: &RunContext,
        report: &mut DataReport,
    ) -> Result<(polars::prelude::DataFrame, Vec<Metric>), StageError> {
        let data = ctx.workspace.join(&self.params.data);
        let images = self.images_dir();
        let mut questions: Vec<(String, Line)> = Vec::new();
        for subtask in self.categories.subtasks() {
            let path = data.join(format!("{subtask}.txt"));
            let lines = mme::read_subtask(&path, false).map_err(|e| StageError::Failed(e.to_string()))?;
            questions.extend(lines.into_iter().map(|l| (subtask.to_string(), l)));
        }
        report.input("questions", questions.len() as u64);
        let mut items = Vec::with_capacity(questions.len());
        for (subtask, line) in &questions {
            let candidates = [
                images.join(subtask).join("images").join(&line.image),
                images.join(subtask).join(&line.image),
                images.join(&line.image),
            ];
            let image = self.store_image(ctx, &candidates).map_err(|e| {
                StageError::Failed(format!("{}/{subtask}.txt, image `{}`: {e}", self.params.data, line.image))
            })?;
            items.push(Item { prompt: line.question.clone(), image: Some(image) });
        }
        let answers = self.answer(ctx, &items, report)?;
        let mut by_subtask: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        for ((subtask, line), (_, result)) in questions.iter().zip(&answers) {
            let prediction = result.text.clone().unwrap_or_default();
            by_subtask.entry(subtask.clone()).or_default().push(Line { prediction, ..line.clone() });
        }
        let scores = mme::score(&by_subtask, &self.categories).map_err(StageError::Failed)?;
        let parsed = |p: &str| match mme::parse_answer(p) {
            mme::Answer::Yes => "yes",
            mme::Answer::No => "no",
            mme::Answer::Other => "other",
        };
        let truth = |a: mme::Answer| if a == mme::Answer::Yes { "yes" } else { "no" };
        let df = frame(
            questions.len(),
            vec![
                str_col("subtask", questions.iter().map(|(s, _)| Some(s.clone())).collect()),
                str_col("image", questions.iter().map(|(_, l)| Some(l.image.clone())).collect()),
                str_col("question", questions.iter().map(|(_, l)| Some(l.question.clone())).collect()),
                str_col("ground_truth", questions.iter().map(|(_, l)| Some(truth(l.truth).into())).collect()),
                str_col("prediction", answers.iter().map(|(_, r)| r.text.clone()).collect()),
                str_col(
                    "parsed",
                    answers.iter().map(|(_, r)| Some(parsed(r.text.as_deref().unwrap_or("")).into())).collect(),
                ),
                str_col("status", answers.iter().map(|(_, r)| Some(status(r))).collect()),
                str_col("call_key", answers.iter().map(|(k, _)| Some(k.clone())).collect()),
            ],
        )
        .map_err(|e| StageError::Failed(e.to_string()))?;
        Ok((df, results::mme_metrics("mme", &scores)))
    }

    fn run_mmhal(
        &self,
        ctx: &RunContext,
        report: &mut DataReport,
    ) -> Result<(polars::prelude::DataFrame, Vec<Metric>), StageError> {
        let questions = mmhal::read_questions(&ctx.workspace.join(&self.params.data)).map_err(StageError::Failed)?;
        report.input("questions", questions.len() as u64);
        let images = self.images_dir();
        let mut items = Vec::with_capacity(questions.len());
        for (i, q) in questions.iter().enumerate() {
            let mut candidates = Vec::new();
            if let Some(src) = &q.image_src {
                candidates.extend(src.rsplit('/').next().map(|name| images.join(name)));
            }
            if let Some(id) = &q.image_id {
                candidates.extend([
                    images.join(id),
                    images.join(format!("{id}.jpg")),
                    images.join(format!("{id}.png")),
                ]);
            }
            let image = self
                .store_image(ctx, &candidates)
                .map_err(|e| StageError::Failed(format!("{}, question {}: {e}", self.params.data, i + 1)))?;
            items.push(Item { prompt: q.question.clone(), image: Some(image) });
        }
        let answers = self.answer(ctx, &items, report)?;
        let ratings = self.judge(ctx, &questions, &answers, report)?;
        let scored: Vec<(String, mmhal::Rating)> =
            questions.iter().zip(&ratings).map(|(q, (_, r))| (q.question_type.clone(), r.clone())).collect();
        for (q, (_, r)) in questions.iter().zip(&ratings) {
            if let Some(warning) = &r.warning {
                tracing::warn!("{}: `{}`: {warning}", ctx.instance, q.question);
            }
        }
        report.note("unrated", scored.iter().filter(|(_, r)| r.warning.is_some()).count() as u64);
        let summary = mmhal::summarise(&scored);
        let n = questions.len();
        let df = frame(
            n,
            vec![
                str_col("question_type", questions.iter().map(|q| Some(q.question_type.clone())).collect()),
                str_col("question", questions.iter().map(|q| Some(q.question.clone())).collect()),
                str_col("gt_answer", questions.iter().map(|q| Some(q.gt_answer.clone())).collect()),
                str_col("prediction", answers.iter().map(|(_, r)| r.text.clone()).collect()),
                str_col("status", answers.iter().map(|(_, r)| Some(status(r))).collect()),
                str_col("call_key", answers.iter().map(|(k, _)| Some(k.clone())).collect()),
                str_col("judge_reply", ratings.iter().map(|(reply, _)| reply.clone()).collect()),
                crate::data::frame::i64_col("rating", ratings.iter().map(|(_, r)| Some(i64::from(r.score))).collect()),
            ],
        )
        .map_err(|e| StageError::Failed(e.to_string()))?;
        Ok((df, results::mmhal_metrics("mmhal", &summary)))
    }

    /// The judge's reply and rating for every answer (through the memo).
    fn judge(
        &self,
        ctx: &RunContext,
        questions: &[Question],
        answers: &[(String, CallResult)],
        report: &mut DataReport,
    ) -> Result<Vec<(Option<String>, mmhal::Rating)>, StageError> {
        let judge = self.judge.as_ref().ok_or_else(|| StageError::Failed("internal: no judge".into()))?;
        let template = match &self.params.judge_template {
            Some(path) => std::fs::read_to_string(ctx.workspace.join(path))
                .map_err(|e| StageError::Failed(format!("judge_template {path}: {e}")))?,
            None => mmhal::JUDGE_TEMPLATE.to_string(),
        };
        let specs: Vec<CallSpec> = questions
            .iter()
            .zip(answers)
            .map(|(q, (_, answer))| {
                let prompt = mmhal::judge_prompt(&template, q, answer.text.as_deref().unwrap_or(""));
                let request = ChatRequest {
                    messages: calls::opening(None, None, prompt),
                    params: BTreeMap::from([
                        ("temperature".to_string(), json!(0.0)),
                        ("max_tokens".to_string(), json!(512)),
                    ]),
                    image_max_side: None,
                };
                CallSpec { key: calls::call_key(&judge.identity, &request, 0), model: judge.name.clone(), request }
            })
            .collect();
        let results = call_models(ctx, [(judge.name.as_str(), &judge.def)], &specs, report)?;
        Ok(keyed(&specs, &results)?
            .into_iter()
            .map(|(_, r)| {
                let rating = mmhal::parse_rating(r.text.as_deref().unwrap_or(""));
                (r.text, rating)
            })
            .collect())
    }
}

/// Each spec's result, in the specs' order.
fn keyed(specs: &[CallSpec], results: &HashMap<String, CallResult>) -> Result<Vec<(String, CallResult)>, StageError> {
    specs
        .iter()
        .map(|s| {
            results
                .get(&s.key)
                .map(|r| (s.key.clone(), r.clone()))
                .ok_or_else(|| StageError::Failed(format!("internal: no result for call {}", s.key)))
        })
        .collect()
}

fn status(r: &CallResult) -> String {
    match r.status {
        CallStatus::Ok => "ok",
        CallStatus::Refused => "refused",
        CallStatus::Rejected => "rejected",
    }
    .to_string()
}

impl Stage for Evaluate {
    fn canonical_params(&self) -> Value {
        let mut value = canonical(&self.params);
        if let Value::Object(map) = &mut value {
            // The baseline enters by its results' digest (an input), not by its name.
            map.remove("baseline");
            map.insert("categories".into(), json!(self.categories));
            if let Some((_, identity)) = &self.named_policy {
                map.insert("policy".into(), json!(identity));
            }
            if let Some(judge) = &self.judge {
                map.insert("judge".into(), json!(judge.identity));
            }
        }
        value
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl { name: "predictions".into(), table: true },
            OutputDecl { name: "results".into(), table: true },
            OutputDecl { name: "report".into(), table: false },
        ]
    }

    fn roles(&self) -> Roles {
        Roles::Named(&[])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        let mut files = vec![PathBuf::from(&self.params.data)];
        let images = self.images_dir();
        if !files.contains(&images) && !images.as_os_str().is_empty() {
            files.push(images);
        }
        files.extend(self.params.judge_template.as_ref().map(PathBuf::from));
        files
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, crate::store::OutputRef>, StageError> {
        let mut report = DataReport::default();
        let (mut predictions, metrics) = match self.params.benchmark {
            Benchmark::Mme => self.run_mme(ctx, &mut report)?,
            Benchmark::Mmhal => self.run_mmhal(ctx, &mut report)?,
        };
        let baseline = match ctx.inputs.get("baseline") {
            Some(_) => Some(results::read_results(&ctx.read_table("baseline")?).map_err(StageError::Failed)?),
            None => None,
        };
        let mut results = results::results_table(&metrics, baseline.as_deref()).map_err(StageError::Failed)?;
        report.output("predictions", predictions.height() as u64);
        Ok(BTreeMap::from([
            ("predictions".to_string(), ctx.put_table(&mut predictions)?),
            ("results".to_string(), ctx.put_table(&mut results)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}
