//! MME scoring exactly as the benchmark's official calculation script does it (DESIGN §7):
//! answers parsed from the lowercased prediction's first 4 characters, acc and acc+ per
//! subtask, subtask score = 100·acc + 100·acc+, category totals summed in the official order —
//! so the totals agree to the last digit. The subtask → category map is a parameter: other
//! benchmarks in the same results layout (the synthetic one) are scored by the same code.
//!
//! The results layout: a directory with one `<subtask>.txt` per subtask, lines
//! `image \t question \t ground_truth \t prediction`, consecutive lines an image's two questions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EvalError;

/// A parsed prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    /// Neither: always wrong.
    Other,
}

impl Answer {
    /// A ground truth as written ("Yes", "no", …); `None` unless yes or no.
    pub fn from_truth(text: &str) -> Option<Answer> {
        match text.to_lowercase().as_str() {
            "yes" => Some(Answer::Yes),
            "no" => Some(Answer::No),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Yes => "yes",
            Answer::No => "no",
            Answer::Other => "other",
        }
    }
}

/// The official rule: lowercase, then only the first 4 characters count — "yes" within them is
/// yes, else "no" within them is no. No trimming: `"   yes"` is other, `"  no"` is no.
pub fn parse_answer(prediction: &str) -> Answer {
    let window: String = prediction.to_lowercase().chars().take(4).collect();
    if window.contains("yes") {
        Answer::Yes
    } else if window.contains("no") {
        Answer::No
    } else {
        Answer::Other
    }
}

/// Which subtasks make up which reported total, in the order they are summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Categories(pub Vec<(String, Vec<String>)>);

impl Categories {
    /// MME's own: 10 perception and 4 cognition subtasks, in the official script's order.
    pub fn official() -> Categories {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Categories(vec![
            (
                "perception".into(),
                names(&[
                    "existence",
                    "count",
                    "position",
                    "color",
                    "posters",
                    "celebrity",
                    "scene",
                    "landmark",
                    "artwork",
                    "OCR",
                ]),
            ),
            (
                "cognition".into(),
                names(&["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]),
            ),
        ])
    }

    pub fn subtasks(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|(_, subtasks)| subtasks.iter().map(String::as_str))
    }
}

/// One line of a results file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub image: String,
    pub question: String,
    pub truth: Answer,
    pub prediction: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubtaskScore {
    pub acc: f64,
    pub acc_plus: f64,
    pub score: f64,
    pub questions: usize,
    pub correct: usize,
    pub both_correct_images: usize,
    pub unparseable: usize,
}

/// Category totals (by name) and every subtask's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MmeScores {
    #[serde(flatten)]
    pub totals: BTreeMap<String, f64>,
    pub subtasks: BTreeMap<String, SubtaskScore>,
    /// The categories in their order (for printing); not serialised.
    #[serde(skip)]
    pub order: Vec<String>,
}

/// Scores one subtask's lines (pairs of consecutive lines are an image's two questions). A
/// subtask with no parseable answer scores 0 (the official script crashes there).
pub fn score_subtask(lines: &[Line]) -> SubtaskScore {
    let questions = lines.len();
    let right = |l: &Line| parse_answer(&l.prediction) == l.truth;
    let correct = lines.iter().filter(|l| right(l)).count();
    let unparseable = lines.iter().filter(|l| parse_answer(&l.prediction) == Answer::Other).count();
    let images = lines.chunks(2).count();
    let both_correct_images = lines.chunks(2).filter(|pair| pair.iter().all(right)).count();
    // Python floats, in the official script's order: acc, acc+, then 0 + acc·100 + acc+·100.
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let acc = ratio(correct, questions);
    let acc_plus = ratio(both_correct_images, images);
    let score = acc * 100.0 + acc_plus * 100.0;
    SubtaskScore { acc, acc_plus, score, questions, correct, both_correct_images, unparseable }
}

/// Reads `<subtask>.txt` in the official layout (4 tab-separated fields; the prediction may be
/// empty). With `need_prediction` false, 3-field lines (questions without answers) are accepted.
pub fn read_subtask(path: &Path, need_prediction: bool) -> Result<Vec<Line>, EvalError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| EvalError::File { path: shown.clone(), message: e.to_string() })?;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let bad = |message: String| EvalError::Line { path: shown.clone(), line: i + 1, message };
        let fields: Vec<&str> = raw.split('\t').collect();
        let (image, question, truth, prediction) = match fields.as_slice() {
            [i, q, t, p] => (*i, *q, *t, *p),
            [i, q, t] if !need_prediction => (*i, *q, *t, ""),
            _ => {
                let want = if need_prediction { "4" } else { "3 or 4" };
                return Err(bad(format!(
                    "expected {want} tab-separated fields (image, question, ground truth, prediction), found {}",
                    fields.len()
                )));
            }
        };
        let Some(truth) = Answer::from_truth(truth) else {
            return Err(bad(format!("the ground truth must be yes or no, not `{}`", truth.to_lowercase())));
        };
        lines.push(Line { image: image.into(), question: question.into(), truth, prediction: prediction.into() });
    }
    if lines.len() % 2 != 0 {
        return Err(EvalError::File {
            path: shown,
            message: format!("{} lines: every image needs its two questions on consecutive lines", lines.len()),
        });
    }
    Ok(lines)
}

/// Scores lines already in memory, by subtask.
pub fn score(lines: &BTreeMap<String, Vec<Line>>, categories: &Categories) -> Result<MmeScores, EvalError> {
    let mut subtasks = BTreeMap::new();
    let mut totals = BTreeMap::new();
    for (category, names) in &categories.0 {
        // `scores = 0; scores += task_score` in the official order.
        let mut total = 0.0;
        for name in names {
            let lines = lines.get(name).ok_or_else(|| EvalError::MissingSubtask { subtask: name.clone() })?;
            let s = score_subtask(lines);
            total += s.score;
            subtasks.insert(name.clone(), s);
        }
        totals.insert(category.clone(), total);
    }
    Ok(MmeScores { totals, subtasks, order: categories.0.iter().map(|(c, _)| c.clone()).collect() })
}

/// Scores a results directory.
pub fn score_dir(dir: &Path, categories: &Categories) -> Result<MmeScores, EvalError> {
    let mut lines = BTreeMap::new();
    for name in categories.subtasks() {
        let path: PathBuf = dir.join(format!("{name}.txt"));
        if !path.is_file() {
            return Err(EvalError::File {
                path: path.display().to_string(),
                message: format!("missing: a results directory needs one file per subtask ({name}.txt)"),
            });
        }
        lines.insert(name.to_string(), read_subtask(&path, true)?);
    }
    score(&lines, categories)
}

/// MME in its results layout: a `<subtask>.txt` per subtask in `data`, images beside them,
/// scored by the official rules.
pub struct Mme;
pub const MME: Mme = Mme;

impl super::benchmark::Benchmark for Mme {
    fn name(&self) -> &'static str {
        "mme"
    }

    fn questions(&self) -> super::benchmark::Questions {
        super::benchmark::Questions::Files { images: super::benchmark::ImagesAt::Data }
    }

    fn scoring(&self) -> super::benchmark::Scoring {
        super::benchmark::Scoring::Rules
    }
}

#[cfg(test)]
mod tests;
