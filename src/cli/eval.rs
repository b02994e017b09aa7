//! `silkie eval mme DIR` and `silkie eval mmhal FILE --judge MODEL`: score results that exist
//! already, outside any pipeline — the same scorers the `evaluate` stage runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use clap::{Args, ValueEnum};

use super::{Context, Failure, Format, Outcome, PipelineFile, print_json};
use silkie::calls::{self, CallSpec, ChatRequest};
use silkie::eval::mme::{self, Categories};
use silkie::eval::mmhal;
use silkie::stages::{DEFAULT_PROGRESS_INTERVAL, StageProgress};

#[derive(Args)]
pub struct EvalArgs {
    /// Which benchmark's rules
    #[arg(value_enum)]
    benchmark: EvalBenchmark,
    /// mme: a results directory (<subtask>.txt files); mmhal: the benchmark JSON with `model_answer`s
    path: PathBuf,
    /// mmhal: the judge, a `models:` entry of the pipeline (-f)
    #[arg(long)]
    judge: Option<String>,
    /// mmhal: the judge's prompt template instead of silkie's
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    #[command(flatten)]
    file: PipelineFile,
    /// Send no judge call: answer from the memo only
    #[arg(long)]
    offline: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalBenchmark {
    Mme,
    Mmhal,
}

pub fn run(ctx: &Context, args: EvalArgs) -> Outcome {
    match args.benchmark {
        EvalBenchmark::Mme => mme_scores(&args.path, args.format),
        EvalBenchmark::Mmhal => mmhal_scores(ctx, &args),
    }
}

fn mme_scores(dir: &Path, format: Format) -> Outcome {
    let scores = mme::score_dir(dir, &Categories::official()).map_err(|e| Failure::Invalid(e.to_string()))?;
    if format == Format::Json {
        print_json(&scores);
        return Ok(true);
    }
    for (category, subtasks) in &Categories::official().0 {
        println!("{category}: {}", scores.totals[category]);
        for name in subtasks {
            let s = &scores.subtasks[name];
            println!(
                "  {name:24} {:>8.2}   acc {:.4}  acc+ {:.4}  ({} questions, {} unparseable)",
                s.score, s.acc, s.acc_plus, s.questions, s.unparseable
            );
        }
    }
    Ok(true)
}

fn mmhal_scores(ctx: &Context, args: &EvalArgs) -> Outcome {
    let Some(judge) = &args.judge else {
        return Err(Failure::Invalid("mmhal needs --judge MODEL (a `models:` entry of the pipeline)".into()));
    };
    let (pipeline, _) = ctx.load(args.file.file.as_deref(), &args.file.sets)?;
    let Some(def) = pipeline.models.get(judge) else {
        let help = silkie::dsl::did_you_mean(judge, pipeline.models.keys().map(String::as_str))
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        return Err(Failure::Invalid(format!("`{judge}` is not in the `models:` of {}{help}", pipeline.label)));
    };
    let questions = mmhal::read_questions(&args.path).map_err(|e| Failure::Invalid(e.to_string()))?;
    let template = match &args.template {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?
        }
        None => mmhal::JUDGE_TEMPLATE.to_string(),
    };
    let identity = silkie::providers::identity(judge, def);
    let mut specs = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let Some(answer) = &q.model_answer else {
            let at = format!("{}: question {} has no `model_answer` to rate", args.path.display(), i + 1);
            return Err(Failure::Invalid(at));
        };
        let request = ChatRequest {
            messages: calls::opening(None, None, mmhal::judge_prompt(&template, q, answer)),
            params: BTreeMap::from([("temperature".to_string(), json!(0.0)), ("max_tokens".to_string(), json!(512))]),
            image_max_side: None,
        };
        specs.push(CallSpec { key: calls::call_key(&identity, &request, 0), model: judge.clone(), request });
    }
    let store = ctx.store()?;
    let progress = StageProgress::new(None, DEFAULT_PROGRESS_INTERVAL, "eval mmhal", specs.len() as u64, "calls");
    let on_progress = |done: u64, total: u64, hits: u64, failed: u64| {
        progress.update(done, total, |_| format!("{hits} from the memo, {failed} failed"));
    };
    let round = silkie::providers::Round {
        store: &store,
        memo: &store.memo_path(),
        offline: args.offline,
        label: "eval mmhal",
        progress: &on_progress,
    };
    let results = silkie::providers::call_through_memo(&round, &[(judge.as_str(), def)], &specs)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut scored = Vec::with_capacity(questions.len());
    for (i, (q, spec)) in questions.iter().zip(&specs).enumerate() {
        let reply = results.get(&spec.key).and_then(|r| r.text.clone()).unwrap_or_default();
        let rating = mmhal::parse_rating(&reply);
        if let Some(warning) = &rating.warning {
            eprintln!("warning: question {}: {warning}", i + 1);
        }
        scored.push((q.question_type.clone(), rating));
    }
    let summary = mmhal::summarise(&scored);
    if args.format == Format::Json {
        print_json(&summary);
    } else {
        println!(
            "score {:.2} (0–6), hallucination rate {:.2}, {} questions",
            summary.score, summary.hallucination_rate, summary.questions
        );
        for (kind, mean) in &summary.by_type {
            println!("  {kind:14} {mean:.2}");
        }
    }
    Ok(true)
}
