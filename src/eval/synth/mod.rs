//! The synthetic visual world of the embedded default (DESIGN §8): scenes of coloured shapes on
//! a coarse grid, drawn as small PNGs, with their ground truth; instructions about them in a
//! small fixed language (descriptions, attribute, count, position and yes/no questions) with
//! the true answer; MME-style yes/no benchmark pairs; and the grading an oracle judge needs —
//! reading a question back, reading an answer's claims, and rating them against the scene.
//!
//! The scene travels inside its PNG (a `silkie-scene` text chunk), so whoever holds an image —
//! the oracle judge among them — knows its truth without a side channel; models see pixels only.

mod grade;
mod language;
mod render;

pub use grade::{Grade, grade_answer, hallucination_score};
pub use language::{Asked, parse_question};
pub use render::{read_scene, render_png};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Square,
    Circle,
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

pub const SHAPES: [Shape; 3] = [Shape::Square, Shape::Circle, Shape::Triangle];
pub const COLOURS: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

impl Shape {
    pub fn word(self) -> &'static str {
        match self {
            Shape::Square => "square",
            Shape::Circle => "circle",
            Shape::Triangle => "triangle",
        }
    }
}

impl Colour {
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [230, 200, 30],
        }
    }
}

impl Size {
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    /// None when the world has one size (then no answer mentions size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Grid cell (row, column).
    pub cell: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    pub grid: usize,
    /// In reading order (row by row).
    pub objects: Vec<Object>,
}

/// What scenes may contain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldConfig {
    #[serde(default = "image_size")]
    pub image_size: u32,
    /// Cells per side: 2 (top/bottom × left/right) or 3 (adds middle and center).
    #[serde(default = "grid")]
    pub grid: usize,
    #[serde(default = "one")]
    pub min_objects: usize,
    #[serde(default = "max_objects")]
    pub max_objects: usize,
    #[serde(default = "all_shapes")]
    pub shapes: Vec<Shape>,
    #[serde(default = "all_colours")]
    pub colours: Vec<Colour>,
    /// Empty or one size: objects have no size in answers.
    #[serde(default)]
    pub sizes: Vec<Size>,
}

fn image_size() -> u32 {
    32
}
fn grid() -> usize {
    2
}
fn one() -> usize {
    1
}
fn max_objects() -> usize {
    3
}
fn all_shapes() -> Vec<Shape> {
    SHAPES.to_vec()
}
fn all_colours() -> Vec<Colour> {
    COLOURS.to_vec()
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            image_size: image_size(),
            grid: grid(),
            min_objects: one(),
            max_objects: max_objects(),
            shapes: all_shapes(),
            colours: all_colours(),
            sizes: Vec::new(),
        }
    }
}

impl WorldConfig {
    /// What is wrong with this world, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=3).contains(&self.grid) {
            return Err("`grid` must be 2 or 3".into());
        }
        let cells = self.grid * self.grid;
        if self.min_objects == 0 || self.min_objects > self.max_objects || self.max_objects > cells.min(4) {
            return Err(format!(
                "need 1 ≤ min_objects ≤ max_objects ≤ {} (one object per cell, at most four)",
                cells.min(4)
            ));
        }
        if self.shapes.is_empty() || self.colours.is_empty() {
            return Err("`shapes` and `colours` must not be empty".into());
        }
        if self.image_size < 8 * self.grid as u32 {
            return Err(format!("`image_size` must be at least {} for a grid of {}", 8 * self.grid, self.grid));
        }
        Ok(())
    }

    /// Scene `index` of the stream `stream` (a split's own seed): the same every time.
    pub fn scene(&self, seed: u64, stream: &str, index: u64) -> Scene {
        let mut rng = rng_for(seed, stream, index);
        let cells = self.grid * self.grid;
        let n = rng.random_range(self.min_objects..=self.max_objects.min(cells));
        let mut free: Vec<usize> = (0..cells).collect();
        free.shuffle(&mut rng);
        let mut chosen: Vec<usize> = free.into_iter().take(n).collect();
        chosen.sort_unstable();
        let objects = chosen
            .into_iter()
            .map(|c| Object {
                shape: self.shapes[rng.random_range(0..self.shapes.len())],
                colour: self.colours[rng.random_range(0..self.colours.len())],
                size: (self.sizes.len() > 1).then(|| self.sizes[rng.random_range(0..self.sizes.len())]),
                cell: (c / self.grid, c % self.grid),
            })
            .collect();
        Scene { grid: self.grid, objects }
    }
}

/// A generator for one item of one stream, independent of every other item.
pub fn rng_for(seed: u64, stream: &str, index: u64) -> StdRng {
    let hash = blake3::hash(format!("silkie-synth/1:{seed}:{stream}:{index}").as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(hash.as_bytes());
    StdRng::from_seed(bytes)
}

/// Number words the world's answers use.
pub const NUMBERS: [&str; 5] = ["zero", "one", "two", "three", "four"];

/// "top left", "bottom right"; with a 3-grid also "middle", "center".
pub fn position_words(grid: usize, (row, col): (usize, usize)) -> String {
    let rows: &[&str] = if grid == 3 { &["top", "middle", "bottom"] } else { &["top", "bottom"] };
    let cols: &[&str] = if grid == 3 { &["left", "center", "right"] } else { &["left", "right"] };
    match (rows[row], cols[col]) {
        ("middle", "center") => "center".into(),
        (r, c) => format!("{r} {c}"),
    }
}

pub(crate) fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

impl Object {
    /// "large red square" / "red square".
    pub fn noun_phrase(&self) -> String {
        match self.size {
            Some(size) => format!("{} {} {}", size.word(), self.colour.word(), self.shape.word()),
            None => format!("{} {}", self.colour.word(), self.shape.word()),
        }
    }
}

impl Scene {
    /// The true description: one sentence per object, in reading order.
    pub fn description(&self) -> String {
        self.objects
            .iter()
            .map(|o| format!("A {} at the {}.", o.noun_phrase(), position_words(self.grid, o.cell)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What the scene holds, as MMHal's `image_content` labels.
    pub fn labels(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| format!("{} at the {}", o.noun_phrase(), position_words(self.grid, o.cell)))
            .collect()
    }

    pub fn count(&self, colour: Option<Colour>, shape: Option<Shape>) -> usize {
        self.objects
            .iter()
            .filter(|o| colour.is_none_or(|c| o.colour == c) && shape.is_none_or(|s| o.shape == s))
            .count()
    }

    /// The object that is the only one of its `shape` (for "what colour is the square?").
    pub fn unique_shape(&self, shape: Shape) -> Option<&Object> {
        let mut found = self.objects.iter().filter(|o| o.shape == shape);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    pub fn unique_colour(&self, colour: Colour) -> Option<&Object> {
        let mut found = self.objects.iter().filter(|o| o.colour == colour);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// The object that is the only one of its colour and shape.
    pub fn unique_kind(&self, colour: Colour, shape: Shape) -> Option<&Object> {
        let mut found = self.objects.iter().filter(|o| o.colour == colour && o.shape == shape);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

/// A question about a scene with its true answer; `kind` names the question family.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub kind: &'static str,
    pub prompt: String,
    pub answer: String,
}

/// Kinds of training instruction, drawn with these weights.
const KINDS: [(&str, u32); 6] =
    [("describe", 3), ("colour", 2), ("shape", 1), ("count", 2), ("position", 2), ("yesno", 4)];

/// `n` different instructions about `scene`, drawn with `rng` (kinds that do not fit the
/// scene, and repeats, are redrawn); `yes_share` of the yes/no questions are true.
pub fn instructions(
    scene: &Scene,
    world: &WorldConfig,
    n: usize,
    yes_share: f64,
    rng: &mut StdRng,
) -> Vec<Instruction> {
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n && tries < 50 * n.max(1) {
        tries += 1;
        let mut pick = rng.random_range(0..total);
        let kind = KINDS
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or("describe", |k| k.0);
        // Each question at most once per scene.
        if let Some(instruction) = language::ask(kind, scene, world, yes_share, rng)
            && !out.iter().any(|o: &Instruction| o.prompt == instruction.prompt)
        {
            out.push(instruction);
        }
    }
    out
}

/// One MME-style benchmark item: two questions about one image, the true one first.
#[derive(Debug, Clone, PartialEq)]
pub struct YesNoPair {
    pub subtask: &'static str,
    pub yes: String,
    pub no: String,
}

/// The synthetic benchmark's subtasks: four of perception, one cognition-like comparison.
pub const PERCEPTION: [&str; 4] = ["existence", "count", "position", "color"];
pub const COGNITION: [&str; 1] = ["comparison"];

use super::benchmark::{Benchmark, Questions, Scoring};

/// The synthetic world's MME-style table (a `synth` stage's `mme` output), scored by MME's
/// rules over its own subtasks.
pub struct SynthMme;
pub const SYNTH_MME: SynthMme = SynthMme;

impl Benchmark for SynthMme {
    fn name(&self) -> &'static str {
        "synth-mme"
    }

    fn questions(&self) -> Questions {
        Questions::Input
    }

    fn scoring(&self) -> Scoring {
        Scoring::Rules
    }

    fn categories(&self) -> super::mme::Categories {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        super::mme::Categories(vec![("perception".into(), names(&PERCEPTION)), ("cognition".into(), names(&COGNITION))])
    }
}

/// The synthetic world's descriptions (a `synth` stage's `hal` output), rated by a judge that
/// reads the scene from the image.
pub struct SynthHal;
pub const SYNTH_HAL: SynthHal = SynthHal;

impl Benchmark for SynthHal {
    fn name(&self) -> &'static str {
        "synth-hal"
    }

    fn questions(&self) -> Questions {
        Questions::Input
    }

    fn scoring(&self) -> Scoring {
        Scoring::Judge { shows_image: true }
    }
}

/// A yes/no pair per subtask that fits the scene.
pub fn yes_no_pairs(scene: &Scene, world: &WorldConfig, rng: &mut StdRng) -> Vec<YesNoPair> {
    PERCEPTION
        .iter()
        .chain(COGNITION.iter())
        .filter_map(|subtask| language::yes_no_pair(subtask, scene, world, rng))
        .collect()
}

#[cfg(test)]
mod tests;
