//! Where an `evaluate` stage's questions come from: a benchmark's own files (MME's results
//! layout, MMHal-Bench's JSON) with their images put into the store, or the synthetic world's
//! tables (input `benchmark`); and the checks a benchmark table must pass.

use std::collections::HashMap;
use std::path::PathBuf;

use polars::prelude::DataFrame;

use super::{Evaluate, RunContext, StageError};
use crate::data::DataError;
use crate::data::frame::{optional_strings, strings};
use crate::eval::mme::{self, Categories, Line};
use crate::eval::mmhal::{self, Question};

impl Evaluate {
    /// MME-style questions (subtask, line) with their stored images, in file / table order.
    pub(super) fn mme_questions(&self, ctx: &RunContext) -> Result<Vec<(String, Line, String)>, StageError> {
        if self.reads_input() {
            return table_mme_questions(&ctx.read_table("benchmark")?);
        }
        let data = ctx.workspace.join(self.data());
        let images = self.images_dir();
        let mut stored = StoredImages::new(ctx);
        let mut out = Vec::new();
        for subtask in self.categories.subtasks() {
            let path = data.join(format!("{subtask}.txt"));
            for line in mme::read_subtask(&path, false)? {
                let candidates = [
                    images.join(subtask).join("images").join(&line.image),
                    images.join(subtask).join(&line.image),
                    images.join(&line.image),
                ];
                let image = stored
                    .put(&candidates, || format!("{}/{subtask}.txt, image `{}`", self.data().display(), line.image))?;
                out.push((subtask.to_string(), line, image));
            }
        }
        Ok(out)
    }

    /// MMHal-style questions with their stored images.
    pub(super) fn hal_questions(&self, ctx: &RunContext) -> Result<Vec<(Question, String)>, StageError> {
        if self.reads_input() {
            return table_hal_questions(&ctx.read_table("benchmark")?);
        }
        let questions = mmhal::read_questions(&ctx.workspace.join(self.data()))?;
        let images = self.images_dir();
        let mut stored = StoredImages::new(ctx);
        let mut out = Vec::with_capacity(questions.len());
        for (i, q) in questions.into_iter().enumerate() {
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
            let image = stored.put(&candidates, || format!("{}, question {}", self.data().display(), i + 1))?;
            out.push((q, image));
        }
        Ok(out)
    }
}

/// Benchmark images put into the store, each file once (an MME image has two questions).
struct StoredImages<'a> {
    ctx: &'a RunContext<'a>,
    digests: HashMap<PathBuf, String>,
}

impl<'a> StoredImages<'a> {
    fn new(ctx: &'a RunContext<'a>) -> Self {
        StoredImages { ctx, digests: HashMap::new() }
    }

    /// The digest of the first of `candidates` (workspace paths) that exists; `question`
    /// names the question for an error.
    fn put(&mut self, candidates: &[PathBuf], question: impl Fn() -> String) -> Result<String, StageError> {
        let found = candidates.iter().map(|c| self.ctx.workspace.join(c)).find(|p| p.is_file());
        let Some(path) = found else {
            let problem = match candidates {
                [] => "the question names no image (no `image_src` or `image_id`)".to_string(),
                _ => {
                    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
                    format!("image not found (looked at {})", tried.join(", "))
                }
            };
            return Err(DataError::Record { location: question(), problem }.into());
        };
        if let Some(digest) = self.digests.get(&path) {
            return Ok(digest.clone());
        }
        let digest = self.ctx.store.put_file(&path)?.0;
        self.digests.insert(path, digest.clone());
        Ok(digest)
    }
}

/// A benchmark table must hold every subtask the categories name, only those, and each
/// image's two questions on consecutive rows — what acc+ counts on.
pub(super) fn check_pairs(listed: &[(String, Line, String)], categories: &Categories) -> Result<(), StageError> {
    let known: Vec<&str> = categories.subtasks().collect();
    if let Some((subtask, _, _)) = listed.iter().find(|(s, _, _)| !known.contains(&s.as_str())) {
        return Err(StageError::param(
            "params.categories",
            format!("input `benchmark` has subtask `{subtask}`, which is not listed ({})", known.join(", ")),
        ));
    }
    for subtask in known {
        let rows: Vec<&Line> = listed.iter().filter(|(s, _, _)| s == subtask).map(|(_, l, _)| l).collect();
        if rows.is_empty() {
            return Err(DataError::table(
                "benchmark",
                format!(
                    "no questions of subtask `{subtask}`: give the world more scenes (or colours), or leave \
                     `{subtask}` out of `params.categories`"
                ),
            )
            .into());
        }
        if !rows.len().is_multiple_of(2) || rows.chunks(2).any(|pair| pair[0].image != pair[1].image) {
            return Err(DataError::table(
                "benchmark",
                format!("subtask `{subtask}`: every image needs its two questions on consecutive rows"),
            )
            .into());
        }
    }
    Ok(())
}

/// A column of a `benchmark` input table with no empty cell.
fn required(table: &DataFrame, name: &str) -> Result<Vec<String>, StageError> {
    let values = strings(table, "benchmark", name)?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| v.map(String::from).ok_or_else(|| DataError::value("benchmark", i + 1, name, "is empty").into()))
        .collect()
}

/// The synthetic MME-style table (`subtask`, `image`, `question`, `ground_truth`, optional
/// `image_name`) as questions with their images.
fn table_mme_questions(table: &DataFrame) -> Result<Vec<(String, Line, String)>, StageError> {
    let (subtasks, images, questions, truths) = (
        required(table, "subtask")?,
        required(table, "image")?,
        required(table, "question")?,
        required(table, "ground_truth")?,
    );
    let names = optional_strings(table, "benchmark", "image_name")?;
    let mut out = Vec::with_capacity(table.height());
    for i in 0..table.height() {
        let Some(truth) = mme::Answer::from_truth(&truths[i]) else {
            let problem = format!("is `{}`, not yes or no", truths[i].to_lowercase());
            return Err(DataError::value("benchmark", i + 1, "ground_truth", problem).into());
        };
        let name = names.as_ref().and_then(|n| n[i]).unwrap_or(&images[i]).to_string();
        let line = Line { image: name, question: questions[i].clone(), truth, prediction: String::new() };
        out.push((subtasks[i].clone(), line, images[i].clone()));
    }
    Ok(out)
}

/// The synthetic description table (`question_type`, `question`, `image`, `gt_answer`,
/// `image_content` as a JSON list) as questions with their images.
fn table_hal_questions(table: &DataFrame) -> Result<Vec<(Question, String)>, StageError> {
    let (types, questions, images) =
        (required(table, "question_type")?, required(table, "question")?, required(table, "image")?);
    let truths = optional_strings(table, "benchmark", "gt_answer")?;
    let contents = optional_strings(table, "benchmark", "image_content")?;
    let mut out = Vec::with_capacity(table.height());
    for i in 0..table.height() {
        let content = contents.as_ref().and_then(|c| c[i]);
        let labels =
            content.map(|c| serde_json::from_str(c).unwrap_or_else(|_| vec![c.to_string()])).unwrap_or_default();
        let question = Question {
            question_type: types[i].clone(),
            question_topic: None,
            image_id: None,
            image_src: None,
            image_content: labels,
            question: questions[i].clone(),
            gt_answer: truths.as_ref().and_then(|t| t[i]).unwrap_or_default().to_string(),
            model_answer: None,
        };
        out.push((question, images[i].clone()));
    }
    Ok(out)
}
