//! MMHal-Bench scoring (DESIGN §7): a judge rates each answer 0–6; the score is the one
//! `rating: N` (N in 0..=6) found in the lowercased reply, exactly as the benchmark's own
//! script finds it — none, or several different ones, score 0 with a warning. Reported: the
//! mean score, the hallucination rate (share of scores below 3) and the mean per question type.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One benchmark question, as the benchmark's JSON holds it (`model_answer` once answered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub question_type: String,
    #[serde(default)]
    pub question_topic: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_src: Option<String>,
    /// Labels of what the image shows (the judge's view of the image).
    #[serde(default)]
    pub image_content: Vec<String>,
    pub question: String,
    pub gt_answer: String,
    #[serde(default)]
    pub model_answer: Option<String>,
}

/// A judge reply read: the score, and why it is 0 when the reply did not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    pub score: u8,
    pub warning: Option<String>,
}

/// The benchmark's rule: every N in 0..=6 with `rating: N` somewhere in the lowercased reply;
/// exactly one such N is the score, otherwise 0. (So `**Rating:** 5` scores 0, as there.)
pub fn parse_rating(reply: &str) -> Rating {
    let lower = reply.to_lowercase();
    let found: Vec<u8> = (0..=6u8).filter(|n| lower.contains(&format!("rating: {n}"))).collect();
    match found.as_slice() {
        [n] => Rating { score: *n, warning: None },
        [] => Rating { score: 0, warning: Some("no `rating: N` (N in 0–6) in the judge's reply: scored 0".into()) },
        several => {
            Rating { score: 0, warning: Some(format!("several ratings ({several:?}) in the judge's reply: scored 0")) }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MmhalScores {
    /// Mean score, 0–6.
    pub score: f64,
    /// Share of answers scored below 3.
    pub hallucination_rate: f64,
    pub questions: usize,
    /// Replies that gave no single rating (scored 0).
    pub unrated: usize,
    pub by_type: BTreeMap<String, f64>,
}

/// Scores answers: (question type, judge score) per answer.
pub fn summarise(scores: &[(String, Rating)]) -> MmhalScores {
    let n = scores.len();
    let mean = |values: &[f64]| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
    let all: Vec<f64> = scores.iter().map(|(_, r)| f64::from(r.score)).collect();
    let below = scores.iter().filter(|(_, r)| r.score < 3).count();
    let mut by_type: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (kind, r) in scores {
        by_type.entry(kind.clone()).or_default().push(f64::from(r.score));
    }
    MmhalScores {
        score: mean(&all),
        hallucination_rate: if n == 0 { 0.0 } else { below as f64 / n as f64 },
        questions: n,
        unrated: scores.iter().filter(|(_, r)| r.warning.is_some()).count(),
        by_type: by_type.into_iter().map(|(k, v)| (k, mean(&v))).collect(),
    }
}

/// Reads the benchmark's JSON: a list of questions.
pub fn read_questions(path: &Path) -> Result<Vec<Question>, super::EvalError> {
    let file = |message| super::EvalError::File { path: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        file(format!("at {at}: {}", e.into_inner()))
    })
}

/// What the judge is asked: our own template, in the spirit of the benchmark's (rate 0–6 how
/// informative the answer is and whether it hallucinates, given the image's contents and a
/// reference answer), ending in the `Rating: N` line the parser reads.
pub const JUDGE_TEMPLATE: &str = include_str!("mmhal-judge.txt");

/// The judge's prompt for one answered question; `template` uses `{image_content}`,
/// `{question}`, `{gt_answer}` and `{model_answer}`.
pub fn judge_prompt(template: &str, q: &Question, answer: &str) -> String {
    template
        .replace("{image_content}", &q.image_content.join(", "))
        .replace("{question}", &q.question)
        .replace("{gt_answer}", &q.gt_answer)
        .replace("{model_answer}", answer)
}

/// MMHal-Bench: its JSON at `data`, images beside it, each answer rated by a judge.
pub struct Mmhal;
pub const MMHAL: Mmhal = Mmhal;

impl super::benchmark::Benchmark for Mmhal {
    fn name(&self) -> &'static str {
        "mmhal"
    }

    fn questions(&self) -> super::benchmark::Questions {
        super::benchmark::Questions::Files { images: super::benchmark::ImagesAt::Beside }
    }

    fn scoring(&self) -> super::benchmark::Scoring {
        // MMHal's judge is text-only: it reads the image's description.
        super::benchmark::Scoring::Judge { shows_image: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_the_benchmark_reads_them() {
        let score = |reply: &str| parse_rating(reply).score;
        assert_eq!(score("Explanation: accurate and complete.\nRating: 5"), 5);
        assert_eq!(score("rating: 0"), 0);
        assert_eq!(score("RATING: 6"), 6);
        // Markdown bold breaks the pattern: 0, with a warning, as the original scores it.
        let bold = parse_rating("**Rating:** 5");
        assert_eq!(bold.score, 0);
        assert!(bold.warning.unwrap().contains("no `rating: N`"));
        // Two different ratings: 0 with a warning; the same one twice is one rating.
        let two = parse_rating("Rating: 2 ... on reflection, Rating: 4");
        assert_eq!(two.score, 0);
        assert!(two.warning.unwrap().contains("several"));
        assert_eq!(score("Rating: 4. To repeat, rating: 4"), 4);
        assert_eq!(parse_rating("I cannot rate this.").score, 0);
        // Out of range: "rating: 7" matches nothing; "rating: 10" contains "rating: 1".
        assert_eq!(score("Rating: 7"), 0);
        assert_eq!(score("Rating: 10"), 1);
        assert_eq!(score("Rating:5"), 0);
    }

    #[test]
    fn the_summary_is_the_mean_the_hallucination_rate_and_per_type_means() {
        let r = |t: &str, score: u8| (t.to_string(), Rating { score, warning: None });
        let scores = [r("attribute", 6), r("attribute", 2), r("counting", 3), r("counting", 0), r("relation", 4)];
        let s = summarise(&scores);
        assert_eq!(s.score, 15.0 / 5.0);
        assert_eq!(s.hallucination_rate, 2.0 / 5.0);
        assert_eq!(s.by_type["attribute"], 4.0);
        assert_eq!(s.by_type["counting"], 1.5);
        assert_eq!(s.by_type["relation"], 4.0);
        assert_eq!(s.questions, 5);
    }
}
