//! `evaluate`: runs a policy over a benchmark and scores it (DESIGN §7). The policy is a model
//! reference — a stage's checkpoint (`{ stage: NAME }`) or a checkpoint folder (`{ path: DIR }`),
//! generated in-process by provider `local`, or a `models:` entry — and every answer goes
//! through the call memo, so scoring again never generates again. `benchmark: mme` reads questions in MME's results layout and
//! scores them with the official rules (`categories` maps subtasks to totals, for other
//! benchmarks in that layout); `mmhal` reads MMHal-Bench's JSON and has a `judge` rate every
//! answer 0–6. `baseline: STAGE` (another evaluate stage) adds its values and the relative
//! change. Outputs `predictions` and `results`. Where the questions come from is `questions.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::calling::{CallTarget, Decoding, call_models};
use super::{
    ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, key_precision, parse_params,
    precision,
};
use crate::calls::{self, CallResult, CallSpec, CallStatus, ChatRequest, ModelIdentity};
use crate::data::DataError;
use crate::data::frame::{frame, str_col};
use crate::data::report::DataReport;
use crate::dsl::{Issue, ModelDef, ModelRef, did_you_mean};
use crate::eval::benchmark::{self, Benchmark, ImagesAt, Questions, Scoring};
use crate::eval::mme::{self, Categories, Line};
use crate::eval::mmhal::{self, Question};
use crate::eval::results::{self, Metric};
use crate::model::device::Precision;
use crate::providers;

mod questions;

use questions::check_pairs;

pub const KIND: Kind = Kind {
    name: "evaluate",
    version: 1,
    model_params: &["policy"],
    stage_inputs: &[("baseline", "results")],
    configure,
};

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
    /// A name in `eval::benchmark::BENCHMARKS`.
    benchmark: String,
    /// mme: a directory of `<subtask>.txt` question files; mmhal: the benchmark's JSON file.
    /// (The synthetic benchmarks read input `benchmark` instead.)
    #[serde(default)]
    data: Option<String>,
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
    benchmark: &'static dyn Benchmark,
    /// Where the policy's answers come from (a checkpoint resolves at run time).
    policy: CallTarget,
    judge: Option<Judge>,
    categories: Categories,
    /// What a checkpoint policy computes in.
    precision: Precision,
}

fn model_entry(config: &ConfigureContext, name: &str, path: &str) -> Result<(ModelDef, ModelIdentity), Issue> {
    let Some(def) = config.models.get(name) else {
        return Err(Issue::new(path, format!("`{name}` is not in `models:`"))
            .with_help(did_you_mean(name, config.models.keys().map(String::as_str))));
    };
    Ok((def.clone(), providers::identity(name, def)))
}

fn configure(params: &Value, config: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    let decoding = Decoding {
        temperature: Some(params.temperature),
        max_tokens: params.max_tokens,
        max_image_side: params.max_image_side,
        ..Decoding::default()
    };
    decoding.check("params")?;
    let policy = CallTarget::configure(&params.policy, config.models, "params.policy")?;
    let benchmark = benchmark::find(&params.benchmark).ok_or_else(|| {
        let names: Vec<&str> = benchmark::BENCHMARKS.iter().map(|b| b.name()).collect();
        Issue::new("params.benchmark", format!("unknown benchmark `{}`; use {}", params.benchmark, names.join(", ")))
            .with_help(did_you_mean(&params.benchmark, names.iter().copied()))
    })?;
    let rules = benchmark.scoring() == Scoring::Rules;
    let judge = match (&params.judge, rules) {
        (Some(name), false) => {
            let (def, identity) = model_entry(config, name, "params.judge")?;
            Some(Judge { name: name.clone(), def, identity })
        }
        (None, false) => {
            return Err(Issue::new(
                "params.judge",
                format!("{} needs a judge: the `models:` entry that rates answers", benchmark.name()),
            ));
        }
        (Some(_), true) => {
            return Err(Issue::new("params.judge", "an MME-style benchmark is scored by its rules, not by a judge"));
        }
        (None, true) => None,
    };
    match (&params.data, benchmark.questions()) {
        (None, Questions::Files { .. }) => {
            return Err(Issue::new(
                "params.data",
                format!("{} reads its questions from `data`: name the file or folder", benchmark.name()),
            ));
        }
        (Some(_), Questions::Input) => {
            return Err(Issue::new(
                "params.data",
                format!(
                    "{} reads its questions from input `benchmark` (`inputs: {{ benchmark: STAGE.OUTPUT }}`), not from `data`",
                    benchmark.name()
                ),
            ));
        }
        _ => {}
    }
    let categories = match &params.categories {
        Some(list) => {
            if list.is_empty() || list.iter().any(|c| c.subtasks.is_empty()) {
                return Err(Issue::new("params.categories", "every category needs at least one subtask"));
            }
            Categories(list.iter().map(|c| (c.name.clone(), c.subtasks.clone())).collect())
        }
        None => benchmark.categories(),
    };
    if params.categories.is_some() && !rules {
        return Err(Issue::new("params.categories", "only MME-style benchmarks have subtask categories"));
    }
    let precision = precision(config, policy.is_local())?;
    Ok(Box::new(Evaluate { params, benchmark, policy, judge, categories, precision }))
}

/// One question put to the policy.
struct Item {
    prompt: String,
    image: Option<String>,
}

impl Evaluate {
    fn data(&self) -> PathBuf {
        PathBuf::from(self.params.data.as_deref().unwrap_or_default())
    }

    fn images_dir(&self) -> PathBuf {
        match (&self.params.images, self.benchmark.questions()) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Questions::Files { images: ImagesAt::Beside }) => {
                self.data().parent().map(Path::to_path_buf).unwrap_or_default()
            }
            (None, _) => self.data(),
        }
    }

    /// Whether the questions are a table another stage made (input `benchmark`).
    fn reads_input(&self) -> bool {
        self.benchmark.questions() == Questions::Input
    }

    fn max_tokens(&self) -> u32 {
        self.params.max_tokens.unwrap_or(self.benchmark.max_tokens())
    }

    /// Answers to `items` from the policy, in order (through the memo).
    fn answer(
        &self,
        ctx: &RunContext,
        items: &[Item],
        report: &mut DataReport,
    ) -> Result<Vec<(String, CallResult)>, StageError> {
        let (name, def, identity) = self.policy.resolve(ctx)?;
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

    fn run_mme(&self, ctx: &RunContext, report: &mut DataReport) -> Result<(DataFrame, Vec<Metric>), StageError> {
        let listed = self.mme_questions(ctx)?;
        if self.reads_input() {
            check_pairs(&listed, &self.categories)?;
        }
        report.input("questions", listed.len() as u64);
        let items: Vec<Item> = listed
            .iter()
            .map(|(_, line, image)| Item { prompt: line.question.clone(), image: Some(image.clone()) })
            .collect();
        let questions: Vec<(String, Line)> = listed.into_iter().map(|(s, l, _)| (s, l)).collect();
        let answers = self.answer(ctx, &items, report)?;
        let mut by_subtask: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        for ((subtask, line), (_, result)) in questions.iter().zip(&answers) {
            let prediction = result.text.clone().unwrap_or_default();
            by_subtask.entry(subtask.clone()).or_default().push(Line { prediction, ..line.clone() });
        }
        let scores = mme::score(&by_subtask, &self.categories)?;
        let df = frame(
            questions.len(),
            vec![
                str_col("subtask", questions.iter().map(|(s, _)| Some(s))),
                str_col("image", questions.iter().map(|(_, l)| Some(&l.image))),
                str_col("question", questions.iter().map(|(_, l)| Some(&l.question))),
                str_col("ground_truth", questions.iter().map(|(_, l)| Some(l.truth.as_str()))),
                str_col("prediction", answers.iter().map(|(_, r)| r.text.as_deref())),
                str_col(
                    "parsed",
                    answers.iter().map(|(_, r)| Some(mme::parse_answer(r.text.as_deref().unwrap_or("")).as_str())),
                ),
                str_col("status", answers.iter().map(|(_, r)| Some(r.status.as_str()))),
                str_col("call_key", answers.iter().map(|(k, _)| Some(k))),
            ],
        )
        .map_err(DataError::from)?;
        Ok((df, results::mme_metrics(self.benchmark.name(), &scores)))
    }

    fn run_mmhal(&self, ctx: &RunContext, report: &mut DataReport) -> Result<(DataFrame, Vec<Metric>), StageError> {
        let listed = self.hal_questions(ctx)?;
        report.input("questions", listed.len() as u64);
        let items: Vec<Item> =
            listed.iter().map(|(q, image)| Item { prompt: q.question.clone(), image: Some(image.clone()) }).collect();
        let images: Vec<String> = listed.iter().map(|(_, image)| image.clone()).collect();
        let questions: Vec<Question> = listed.into_iter().map(|(q, _)| q).collect();
        let answers = self.answer(ctx, &items, report)?;
        let ratings = self.judge(ctx, &questions, &images, &answers, report)?;
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
                str_col("question_type", questions.iter().map(|q| Some(&q.question_type))),
                str_col("question", questions.iter().map(|q| Some(&q.question))),
                str_col("gt_answer", questions.iter().map(|q| Some(&q.gt_answer))),
                str_col("prediction", answers.iter().map(|(_, r)| r.text.as_deref())),
                str_col("status", answers.iter().map(|(_, r)| Some(r.status.as_str()))),
                str_col("call_key", answers.iter().map(|(k, _)| Some(k))),
                str_col("judge_reply", ratings.iter().map(|(reply, _)| reply.as_deref())),
                crate::data::frame::i64_col("rating", ratings.iter().map(|(_, r)| Some(i64::from(r.score))).collect()),
            ],
        )
        .map_err(DataError::from)?;
        Ok((df, results::mmhal_metrics(self.benchmark.name(), &summary)))
    }

    /// The judge's reply and rating for every answer (through the memo).
    fn judge(
        &self,
        ctx: &RunContext,
        questions: &[Question],
        images: &[String],
        answers: &[(String, CallResult)],
        report: &mut DataReport,
    ) -> Result<Vec<(Option<String>, mmhal::Rating)>, StageError> {
        let show_image = self.benchmark.scoring() == Scoring::Judge { shows_image: true };
        let judge =
            self.judge.as_ref().ok_or_else(|| StageError::Internal("a judged benchmark without a judge".into()))?;
        let template = match &self.params.judge_template {
            Some(path) => std::fs::read_to_string(ctx.workspace.join(path)).map_err(StageError::io(path))?,
            None => mmhal::JUDGE_TEMPLATE.to_string(),
        };
        let specs: Vec<CallSpec> = questions
            .iter()
            .zip(answers)
            .zip(images)
            .map(|((q, (_, answer)), image)| {
                let prompt = mmhal::judge_prompt(&template, q, answer.text.as_deref().unwrap_or(""));
                let image = show_image.then_some(image.as_str());
                let request = ChatRequest {
                    messages: calls::opening(None, image, prompt),
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
                let rating = match (&r.status, r.text.as_deref()) {
                    (CallStatus::Ok, text) => mmhal::parse_rating(text.unwrap_or("")),
                    // No reply to read: scored 0 like an unreadable one, but said as what it is.
                    (status, _) => mmhal::Rating {
                        score: 0,
                        warning: Some(format!("the judge call was {}: scored 0", status.as_str())),
                    },
                };
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
                .ok_or_else(|| StageError::Internal(format!("no result for call {}", s.key)))
        })
        .collect()
}

impl Stage for Evaluate {
    fn canonical_params(&self) -> Value {
        let mut value = canonical(&self.params);
        if let Value::Object(map) = &mut value {
            // The baseline enters by its results' digest (an input), not by its name.
            map.remove("baseline");
            map.insert("categories".into(), json!(self.categories));
            if let CallTarget::Entry { identity, .. } = &self.policy {
                map.insert("policy".into(), json!(identity));
            }
            if let Some(judge) = &self.judge {
                map.insert("judge".into(), json!(judge.identity));
            }
        }
        key_precision(&mut value, self.precision);
        value
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl { name: "predictions".into(), table: true },
            OutputDecl { name: "results".into(), table: true },
            OutputDecl { name: "report".into(), table: false },
        ]
    }

    fn calls_models(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        if self.reads_input() { Roles::Named(&["benchmark"]) } else { Roles::Named(&[]) }
    }

    fn key_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if !self.reads_input() {
            files.push(self.data());
            let images = self.images_dir();
            if !files.contains(&images) && !images.as_os_str().is_empty() {
                files.push(images);
            }
        }
        files.extend(self.params.judge_template.as_ref().map(PathBuf::from));
        files
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, crate::store::OutputRef>, StageError> {
        let mut report = DataReport::default();
        let (mut predictions, metrics) = match self.benchmark.scoring() {
            Scoring::Rules => self.run_mme(ctx, &mut report)?,
            Scoring::Judge { .. } => self.run_mmhal(ctx, &mut report)?,
        };
        let baseline = match ctx.inputs.get("baseline") {
            Some(_) => Some(results::read_results(&ctx.read_table("baseline")?)?),
            None => None,
        };
        let mut results = results::results_table(&metrics, baseline.as_deref())?;
        report.output("predictions", predictions.height() as u64);
        Ok(BTreeMap::from([
            ("predictions".to_string(), ctx.put_table(&mut predictions)?),
            ("results".to_string(), ctx.put_table(&mut results)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}
