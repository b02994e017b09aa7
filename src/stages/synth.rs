//! `synth`: the synthetic world's data (DESIGN §8). Draws `train_scenes` and held-out
//! `eval_scenes` (their own seeded streams) as PNGs carrying their truth, and writes
//! `instructions` about the training scenes (prompt, image, true answer, question kind), the
//! MME-style benchmark `mme` (a true and a false yes/no question per subtask per held-out
//! scene) and the MMHal-style benchmark `hal` (a description per held-out scene, with its
//! truth and contents), plus the `images` they use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params};
use crate::data::DataError;
use crate::data::frame::{frame, i64_col, str_col};
use crate::dsl::Issue;
use crate::eval::synth::{self, WorldConfig};
use crate::store::{DirEntry, DirManifest, OutputKind, OutputRef};

pub const KIND: Kind = Kind { name: "synth", version: 1, model_params: &[], stage_inputs: &[], configure };

fn train_scenes() -> u64 {
    400
}
fn eval_scenes() -> u64 {
    100
}
fn questions() -> usize {
    4
}
fn half() -> f64 {
    0.5
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    world: WorldConfig,
    #[serde(default = "train_scenes")]
    train_scenes: u64,
    #[serde(default = "eval_scenes")]
    eval_scenes: u64,
    /// Instructions per training scene.
    #[serde(default = "questions")]
    questions_per_scene: usize,
    /// Index of the first training scene: two stages with the same seed and disjoint ranges
    /// draw different scenes of one world (e.g. SFT data and preference prompts).
    #[serde(default)]
    first_scene: u64,
    /// Share of the training yes/no questions whose answer is yes (0.5: balanced). Above
    /// 0.5, the data teaches the yes-bias real VLMs show.
    #[serde(default = "half")]
    yes_share: f64,
    #[serde(default)]
    seed: u64,
    /// The held-out scenes' seed (default: `seed`; their stream is separate either way).
    #[serde(default)]
    eval_seed: Option<u64>,
}

struct Synth {
    params: Params,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    params.world.check().map_err(|e| Issue::new("params.world", e))?;
    if !(0.0..=1.0).contains(&params.yes_share) {
        return Err(Issue::new("params.yes_share", "a share between 0 and 1"));
    }
    if params.train_scenes == 0 || params.questions_per_scene == 0 {
        return Err(Issue::new("params", "`train_scenes` and `questions_per_scene` must be at least 1"));
    }
    Ok(Box::new(Synth { params }))
}

/// Images drawn so far: file name → stored blob.
struct Drawn<'a> {
    ctx: &'a RunContext<'a>,
    files: BTreeMap<String, DirEntry>,
}

impl Drawn<'_> {
    fn draw(&mut self, name: String, scene: &synth::Scene, world: &WorldConfig) -> Result<String, StageError> {
        let png = synth::render_png(scene, world);
        if png.is_empty() {
            return Err(StageError::Internal(format!("the synthetic image {name} did not draw")));
        }
        let (digest, bytes) = self.ctx.store.put_bytes(&png)?;
        self.files.insert(name, DirEntry { digest: digest.clone(), bytes, executable: false });
        Ok(digest)
    }
}

impl Stage for Synth {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl { name: "instructions".into(), table: true },
            OutputDecl { name: "mme".into(), table: true },
            OutputDecl { name: "hal".into(), table: true },
            OutputDecl { name: "images".into(), table: false },
        ]
    }

    fn roles(&self) -> Roles {
        Roles::Named(&[])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let world = &self.params.world;
        let seed = self.params.seed;
        let eval_seed = self.params.eval_seed.unwrap_or(seed);
        let mut drawn = Drawn { ctx, files: BTreeMap::new() };

        let mut instructions: Vec<[String; 5]> = Vec::new();
        let mut scene_of = Vec::new();
        let first = self.params.first_scene;
        for i in first..first + self.params.train_scenes {
            let scene = world.scene(seed, "train", i);
            let name = format!("train-{i:05}.png");
            let image = drawn.draw(name, &scene, world)?;
            let mut rng = synth::rng_for(seed, "train-questions", i);
            for (q, item) in
                synth::instructions(&scene, world, self.params.questions_per_scene, self.params.yes_share, &mut rng)
                    .into_iter()
                    .enumerate()
            {
                instructions.push([
                    format!("train-{i:05}-{q}"),
                    item.prompt,
                    image.clone(),
                    item.answer,
                    item.kind.into(),
                ]);
                scene_of.push(i as i64);
            }
        }
        let mut columns = string_columns(&instructions, ["id", "prompt", "image", "truth", "kind"]);
        columns.push(i64_col("scene", scene_of.into_iter().map(Some).collect()));
        let mut instructions_table = frame(instructions.len(), columns).map_err(DataError::from)?;

        // (subtask, image digest, image name, question, Yes/No)
        let mut mme: Vec<[String; 5]> = Vec::new();
        // (image digest, image name, description, contents)
        let mut hal: Vec<[String; 4]> = Vec::new();
        for i in 0..self.params.eval_scenes {
            let scene = world.scene(eval_seed, "eval", i);
            let name = format!("eval-{i:05}.png");
            let image = drawn.draw(name.clone(), &scene, world)?;
            let mut rng = synth::rng_for(eval_seed, "eval-pairs", i);
            for pair in synth::yes_no_pairs(&scene, world, &mut rng) {
                for (question, truth) in [(pair.yes, "Yes"), (pair.no, "No")] {
                    mme.push([pair.subtask.into(), image.clone(), name.clone(), question, truth.into()]);
                }
            }
            let contents = serde_json::to_string(&scene.labels()).map_err(|e| StageError::Internal(e.to_string()))?;
            hal.push([image, name, scene.description(), contents]);
        }
        // Grouped by subtask (each image's two questions stay together), as MME's files are.
        mme.sort_by_key(|r| synth::PERCEPTION.iter().chain(synth::COGNITION.iter()).position(|s| *s == r[0]));
        let columns = string_columns(&mme, ["subtask", "image", "image_name", "question", "ground_truth"]);
        let mut mme_table = frame(mme.len(), columns).map_err(DataError::from)?;
        let n = hal.len();
        let mut columns = vec![
            str_col("question_type", std::iter::repeat_n(Some("description"), n)),
            str_col("question", std::iter::repeat_n(Some("Describe the image."), n)),
        ];
        columns.extend(string_columns(&hal, ["image", "image_name", "gt_answer", "image_content"]));
        let mut hal_table = frame(n, columns).map_err(DataError::from)?;
        let (digest, bytes) = ctx.store.put_manifest(&DirManifest { files: drawn.files })?;
        let mut outputs = ctx.put_tables(vec![
            ("instructions", &mut instructions_table),
            ("mme", &mut mme_table),
            ("hal", &mut hal_table),
        ])?;
        outputs
            .insert("images".to_string(), OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None });
        Ok(outputs)
    }
}

/// Rows of N strings as N named string columns.
fn string_columns<const N: usize>(rows: &[[String; N]], names: [&str; N]) -> Vec<polars::prelude::Column> {
    names.iter().enumerate().map(|(k, name)| str_col(name, rows.iter().map(|r| Some(&r[k])))).collect()
}
