//! What a benchmark is to the `evaluate` stage: where its questions come from, how its answers
//! are scored, and its defaults. [`BENCHMARKS`] lists them, as `stages::KINDS` lists stage
//! kinds; each is one type in its family's file (`mme.rs`, `mmhal.rs`, `synth/`). A new
//! benchmark in MME's results layout or judged as MMHal-Bench is one type and one line here.

use super::mme::Categories;

/// Where a benchmark's questions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Questions {
    /// Its own files at `data`; images, unless `images` says, in `data` itself
    /// ([`ImagesAt::Data`]) or beside it ([`ImagesAt::Beside`]).
    Files { images: ImagesAt },
    /// A table another stage made (input `benchmark`).
    Input,
}

/// Where a benchmark's images are unless the stage's `images` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagesAt {
    /// In the `data` folder.
    Data,
    /// In the folder that holds the `data` file.
    Beside,
}

/// How a benchmark's answers are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// MME's rules: yes/no answers, accuracy and accuracy+ per subtask, category totals.
    Rules,
    /// A judge model rates each answer 0–6, as MMHal-Bench does; `shows_image` when the judge
    /// reads the image too.
    Judge { shows_image: bool },
}

pub trait Benchmark: Sync {
    /// Its name in `benchmark:` and in the results table.
    fn name(&self) -> &'static str;
    fn questions(&self) -> Questions;
    fn scoring(&self) -> Scoring;
    /// Subtasks and their totals, for rules scoring, unless the stage's `categories` says.
    fn categories(&self) -> Categories {
        Categories::official()
    }
    /// The longest answer asked for unless the stage's `max_tokens` says.
    fn max_tokens(&self) -> u32 {
        match self.scoring() {
            Scoring::Rules => 16,
            Scoring::Judge { .. } => 256,
        }
    }
}

/// Every benchmark `evaluate` runs.
pub static BENCHMARKS: &[&dyn Benchmark] =
    &[&super::mme::MME, &super::mmhal::MMHAL, &super::synth::SYNTH_MME, &super::synth::SYNTH_HAL];

/// The benchmark called `name`.
pub fn find(name: &str) -> Option<&'static dyn Benchmark> {
    BENCHMARKS.iter().copied().find(|b| b.name() == name)
}

impl std::fmt::Debug for dyn Benchmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
