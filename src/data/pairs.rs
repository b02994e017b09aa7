//! Preference pairs from scores: the paper's `all_pairs` and the other strategies.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::frame::{ResponseKeys, f64_col, floats, frame, optional_integers, optional_strings, strings};
use super::report::DataReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every unordered pair with different scores, the higher chosen (the released recipe).
    #[default]
    AllPairs,
    BestVsWorst,
    BestVsRest,
    /// The best against one response drawn (seeded) from those scoring strictly lower.
    BestVsRandom,
    /// The longest response is chosen (the paper's heuristic baseline).
    LongestAsBest,
    /// The named model's response is chosen (the paper's "GPT-4V as best" baseline).
    ModelAsBest,
}

/// How the rejected side is drawn for the heuristic strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rejected {
    /// One other response, drawn with the seed.
    #[default]
    Random,
    /// Every other response.
    All,
    /// The other response with the lowest score.
    LowestScore,
    /// The shortest other response.
    Shortest,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Share of prompts that go to `eval_pairs`.
    pub eval: f64,
    #[serde(default)]
    pub seed: u64,
    /// What must never be on both sides.
    #[serde(default)]
    pub by: SplitBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SplitBy {
    /// An instruction as the model sees it: prompt text and image together.
    #[default]
    Instruction,
    /// The prompt text alone, whatever the image ("Describe the image." goes wholly to one side).
    Prompt,
}

pub struct Options {
    pub strategy: Strategy,
    /// For `model_as_best`.
    pub model: Option<String>,
    pub rejected: Rejected,
    pub min_margin: Option<f64>,
    pub dedupe: bool,
    pub split: Option<Split>,
    pub seed: u64,
}

/// One response of an instruction, as the strategies see it.
struct Candidate<'a> {
    /// Row in the scores table.
    row: usize,
    model: &'a str,
    sample: i64,
    text: &'a str,
    score: Option<f64>,
    /// Why there is no score (`unparseable_rating`, …), when there is none.
    status: &'a str,
}

struct Pair {
    /// Row in the instructions table.
    instruction_row: usize,
    /// Indices into the candidates.
    chosen: usize,
    rejected: usize,
}

/// The pairs (and, with a split, the held-out eval pairs) and the data report.
pub struct Paired {
    pub pairs: DataFrame,
    pub eval_pairs: Option<DataFrame>,
    pub report: DataReport,
}

pub fn make_pairs(instructions: &DataFrame, scores: &DataFrame, opts: &Options) -> Result<Paired, DataError> {
    let mut report = DataReport::default();
    report.input("instructions", instructions.height() as u64);
    report.input("scores", scores.height() as u64);
    let ids: Vec<Option<&str>> = strings(instructions, "instructions", "id")?.iter().collect();
    let prompts: Vec<Option<&str>> = strings(instructions, "instructions", "prompt")?.iter().collect();
    let images =
        optional_strings(instructions, "instructions", "image")?.unwrap_or_else(|| vec![None; instructions.height()]);
    let instruction_row: PlHashMap<&str, usize> =
        ids.iter().enumerate().filter_map(|(i, id)| id.map(|id| (id, i))).collect();

    let keys = ResponseKeys::read(scores, "scores")?;
    if let (Strategy::ModelAsBest, Some(model)) = (opts.strategy, opts.model.as_deref())
        && !keys.model.contains(&model)
    {
        // A name that answered nothing is a typo, not a reason to drop every instruction.
        let mut models: Vec<&str> = keys.model.clone();
        models.sort_unstable();
        models.dedup();
        return Err(DataError::Option {
            key: "model",
            problem: format!("`{model}` answered no instruction; the responses' models: {}", models.join(", ")),
        });
    }
    let texts: Vec<Option<&str>> = strings(scores, "scores", "response")?.iter().collect();
    let values: Vec<Option<f64>> = floats(scores, "scores", "score")?.iter().collect();
    let statuses = optional_strings(scores, "scores", "score_status")?.unwrap_or_else(|| vec![None; scores.height()]);
    let completion_index = optional_integers(scores, "scores", "completion_index")?;
    let mut order: Vec<usize> = (0..keys.len()).collect();
    if !keys.is_sorted() {
        order.sort_by(|&a, &b| keys.key(a).cmp(&keys.key(b)));
    }

    let mut candidates: Vec<Candidate> = Vec::with_capacity(order.len());
    let mut pairs: Vec<Pair> = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let instruction = keys.instruction[order[start]];
        let mut end = start;
        while end < order.len() && keys.instruction[order[end]] == instruction {
            end += 1;
        }
        let base = candidates.len();
        for &row in &order[start..end] {
            candidates.push(Candidate {
                row,
                model: keys.model[row],
                sample: keys.sample[row],
                text: texts[row].unwrap_or_default(),
                // Infinity orders like Python's; NaN has no order and counts as unscored.
                score: values[row].filter(|v| !v.is_nan()),
                status: statuses[row].unwrap_or("unscored"),
            });
        }
        // Responses in the order their source gave them, when it says (the release pairs in
        // completion order: (0,1), (0,2), …); else by model and sample.
        if let Some(index) = &completion_index {
            candidates[base..].sort_by_key(|c| (index[c.row], c.model, c.sample));
        }
        match instruction_row.get(instruction) {
            None => report.drop("unknown_instruction", (end - start) as u64),
            Some(&row) => {
                for (c, r) in choose(instruction, &candidates[base..], opts, &mut report) {
                    pairs.push(Pair { instruction_row: row, chosen: base + c, rejected: base + r });
                }
            }
        }
        start = end;
    }

    let mut kept: Vec<&Pair> = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let (c, r) = (&candidates[pair.chosen], &candidates[pair.rejected]);
        if opts.dedupe && c.text == r.text {
            report.drop("duplicate", 1);
            continue;
        }
        if let (Some(min), Some(cs), Some(rs)) = (opts.min_margin, c.score, r.score)
            && below(cs - rs, min)
        {
            report.drop("below_margin", 1);
            continue;
        }
        kept.push(pair);
    }

    let in_eval = |pair: &Pair| {
        opts.split.is_some_and(|split| {
            let row = pair.instruction_row;
            held_out(split, prompts[row].unwrap_or_default(), images[row].unwrap_or_default())
        })
    };
    let (eval, train): (Vec<&Pair>, Vec<&Pair>) = kept.into_iter().partition(|p| in_eval(p));
    let build = |rows: &[&Pair]| -> Result<DataFrame, DataError> {
        // Gather whole columns by row index: no per-row copies of the texts.
        let index =
            |f: &dyn Fn(&Pair) -> usize| IdxCa::from_vec("".into(), rows.iter().map(|p| f(p) as IdxSize).collect());
        let chosen = index(&|p| candidates[p.chosen].row);
        let rejected = index(&|p| candidates[p.rejected].row);
        let instruction = index(&|p| p.instruction_row);
        let take = |df: &DataFrame, name: &str, idx: &IdxCa, rename: &str| -> PolarsResult<Column> {
            let column = match df.column(name) {
                Ok(c) => c.take(idx)?,
                Err(_) => Column::full_null(name.into(), idx.len(), &DataType::String),
            };
            Ok(column.with_name(rename.into()))
        };
        let margin: Vec<Option<f64>> = rows
            .iter()
            .map(|p| candidates[p.chosen].score.zip(candidates[p.rejected].score).map(|(a, b)| a - b))
            .collect();
        let score = |side: &dyn Fn(&Pair) -> usize, name: &str| {
            f64_col(name, rows.iter().map(|p| candidates[side(p)].score).collect())
        };
        let sample = |side: &dyn Fn(&Pair) -> usize, name: &str| {
            Column::new(name.into(), rows.iter().map(|p| candidates[side(p)].sample).collect::<Vec<i64>>())
        };
        frame(
            rows.len(),
            vec![
                take(scores, "instruction_id", &chosen, "instruction_id")?,
                take(instructions, "prompt", &instruction, "prompt")?,
                take(instructions, "image", &instruction, "image")?,
                take(scores, "response", &chosen, "chosen")?,
                take(scores, "response", &rejected, "rejected")?,
                take(scores, "model", &chosen, "chosen_model")?,
                take(scores, "model", &rejected, "rejected_model")?,
                sample(&|p| p.chosen, "chosen_sample_index"),
                sample(&|p| p.rejected, "rejected_sample_index"),
                score(&|p| p.chosen, "chosen_score"),
                score(&|p| p.rejected, "rejected_score"),
                f64_col("margin", margin),
            ],
        )
        .map_err(DataError::from)
    };
    let pairs_df = build(&train)?;
    report.output("pairs", pairs_df.height() as u64);
    let eval_pairs = match opts.split {
        None => None,
        Some(_) => {
            let df = build(&eval)?;
            report.output("eval_pairs", df.height() as u64);
            Some(df)
        }
    };
    Ok(Paired { pairs: pairs_df, eval_pairs, report })
}

/// Whether a margin falls short of the minimum. Means of ratings are inexact (13/3 − 10/3 is
/// 0.9999999999999996), so a margin within rounding of the minimum meets it.
fn below(margin: f64, min: f64) -> bool {
    margin < min - 1e-9 * min.abs().max(1.0)
}

/// Prompt-level split: a prompt goes wholly to train or to eval, so none leaks between them,
/// whatever ids it appears under.
fn held_out(split: Split, prompt: &str, image: &str) -> bool {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&split.seed.to_le_bytes());
    hasher.update(prompt.as_bytes());
    if split.by == SplitBy::Instruction {
        hasher.update(&[0]);
        hasher.update(image.as_bytes());
    }
    unit(hasher.finalize()) < split.eval
}

fn unit(hash: blake3::Hash) -> f64 {
    let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("a BLAKE3 hash has 32 bytes");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A seeded draw in `0..n`, stable for an instruction whatever the row order.
fn draw(seed: u64, instruction: &str, n: usize) -> usize {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(instruction.as_bytes());
    (unit(hasher.finalize()) * n as f64) as usize % n.max(1)
}

/// The (chosen, rejected) index pairs one instruction yields, counting what it drops.
fn choose(instruction: &str, cands: &[Candidate], opts: &Options, report: &mut DataReport) -> Vec<(usize, usize)> {
    let score = |i: usize| cands[i].score.unwrap_or(f64::NAN);
    let mut out = Vec::new();
    match opts.strategy {
        Strategy::AllPairs => {
            for i in 0..cands.len() {
                for j in i + 1..cands.len() {
                    match (cands[i].score, cands[j].score) {
                        (Some(a), Some(b)) if a > b => out.push((i, j)),
                        (Some(a), Some(b)) if b > a => out.push((j, i)),
                        (Some(_), Some(_)) => report.drop("tie", 1),
                        (None, _) => report.drop(cands[i].status, 1),
                        (_, None) => report.drop(cands[j].status, 1),
                    }
                }
            }
        }
        Strategy::BestVsWorst | Strategy::BestVsRest | Strategy::BestVsRandom => {
            let scored: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].score.is_some()).collect();
            for &i in (0..cands.len()).filter(|i| cands[*i].score.is_none()).collect::<Vec<_>>().iter() {
                report.drop(cands[i].status, 1);
            }
            if scored.len() < 2 {
                report.drop("too_few_scored_responses", 1);
                return out;
            }
            // The first best and the last worst in row order: deterministic on ties.
            let best = *scored.iter().reduce(|a, b| if score(*b) > score(*a) { b } else { a }).expect("two or more");
            let lower: Vec<usize> = scored.iter().copied().filter(|&i| score(i) < score(best)).collect();
            match opts.strategy {
                Strategy::BestVsWorst => {
                    match scored.iter().copied().reduce(|a, b| if score(b) <= score(a) { b } else { a }) {
                        Some(worst) if score(worst) < score(best) => out.push((best, worst)),
                        _ => report.drop("tie", 1),
                    }
                }
                Strategy::BestVsRest => {
                    report.drop("tie", (scored.len() - 1 - lower.len()) as u64);
                    out.extend(lower.iter().map(|&r| (best, r)));
                }
                _ => {
                    // Draw among those that meet the margin, so a close draw does not cost the pair.
                    let eligible: Vec<usize> = lower
                        .iter()
                        .copied()
                        .filter(|&r| opts.min_margin.is_none_or(|m| !below(score(best) - score(r), m)))
                        .collect();
                    match eligible.len() {
                        0 if lower.is_empty() => report.drop("tie", 1),
                        0 => report.drop("below_margin", 1),
                        n => out.push((best, eligible[draw(opts.seed, instruction, n)])),
                    }
                }
            }
        }
        Strategy::LongestAsBest | Strategy::ModelAsBest => {
            let chosen = match opts.strategy {
                Strategy::LongestAsBest => (0..cands.len())
                    .reduce(|a, b| if cands[b].text.chars().count() > cands[a].text.chars().count() { b } else { a }),
                _ => (0..cands.len()).find(|&i| Some(cands[i].model) == opts.model.as_deref()),
            };
            let Some(chosen) = chosen else {
                report.drop("model_absent", 1);
                return out;
            };
            let others: Vec<usize> = (0..cands.len()).filter(|&i| i != chosen).collect();
            if others.is_empty() {
                report.drop("too_few_responses", 1);
                return out;
            }
            let len = |i: usize| cands[i].text.chars().count();
            match opts.rejected {
                Rejected::All => out.extend(others.iter().map(|&r| (chosen, r))),
                Rejected::Random => out.push((chosen, others[draw(opts.seed, instruction, others.len())])),
                Rejected::Shortest => {
                    let r =
                        others.iter().copied().reduce(|a, b| if len(b) < len(a) { b } else { a }).expect("non-empty");
                    out.push((chosen, r));
                }
                Rejected::LowestScore => {
                    match others
                        .iter()
                        .copied()
                        .filter(|&i| cands[i].score.is_some())
                        .reduce(|a, b| if score(b) < score(a) { b } else { a })
                    {
                        Some(r) => out.push((chosen, r)),
                        None => report.drop("too_few_scored_responses", 1),
                    }
                }
            }
        }
    }
    out
}
