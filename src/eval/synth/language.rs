//! The world's small language: asking questions (with their true answers) and reading
//! questions back, so a judge can tell what was asked.

use rand::Rng;
use rand::rngs::StdRng;

use super::{
    COLOURS, Colour, Instruction, NUMBERS, SHAPES, Scene, Shape, WorldConfig, YesNoPair, capitalise, position_words,
};

const YES_NO: &str = " Please answer yes or no.";

/// A question, read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Describe,
    Colour { shape: Shape },
    Shape { colour: Colour },
    Count { colour: Option<Colour> },
    Position { colour: Colour, shape: Shape },
    Exists { colour: Colour, shape: Shape },
    CountIs { n: usize, colour: Option<Colour> },
    At { colour: Colour, shape: Shape, position: String },
    ColourIs { shape: Shape, colour: Colour },
    More { more: Colour, than: Colour },
}

fn pick<T: Copy>(items: &[T], rng: &mut StdRng) -> T {
    items[rng.random_range(0..items.len())]
}

fn yes_no(truth: bool) -> String {
    if truth { "Yes.".into() } else { "No.".into() }
}

fn count_question(n: usize, colour: Option<Colour>) -> String {
    let noun = match colour {
        Some(c) => format!("{} object", c.word()),
        None => "object".into(),
    };
    if n == 1 {
        format!("Is there one {noun} in the image?{YES_NO}")
    } else {
        format!("Are there {} {noun}s in the image?{YES_NO}", NUMBERS[n])
    }
}

impl Asked {
    /// The question's text.
    pub fn text(&self) -> String {
        match self {
            Asked::Describe => "Describe the image.".into(),
            Asked::Colour { shape } => format!("What colour is the {}?", shape.word()),
            Asked::Shape { colour } => format!("What shape is the {} object?", colour.word()),
            Asked::Count { colour: None } => "How many objects are there?".into(),
            Asked::Count { colour: Some(c) } => format!("How many {} objects are there?", c.word()),
            Asked::Position { colour, shape } => format!("Where is the {} {}?", colour.word(), shape.word()),
            Asked::Exists { colour, shape } => {
                format!("Is there a {} {} in the image?{YES_NO}", colour.word(), shape.word())
            }
            Asked::CountIs { n, colour } => count_question(*n, *colour),
            Asked::At { colour, shape, position } => {
                format!("Is the {} {} at the {position}?{YES_NO}", colour.word(), shape.word())
            }
            Asked::ColourIs { shape, colour } => format!("Is the {} {}?{YES_NO}", shape.word(), colour.word()),
            Asked::More { more, than } => {
                format!("Are there more {} objects than {} objects?{YES_NO}", more.word(), than.word())
            }
        }
    }

    /// The true answer about `scene`; none when the question does not fit it.
    pub fn truth(&self, scene: &Scene) -> Option<String> {
        Some(match self {
            Asked::Describe => scene.description(),
            Asked::Colour { shape } => format!("{}.", capitalise(scene.unique_shape(*shape)?.colour.word())),
            Asked::Shape { colour } => format!("A {}.", scene.unique_colour(*colour)?.shape.word()),
            Asked::Count { colour } => format!("{}.", capitalise(NUMBERS[scene.count(*colour, None)])),
            Asked::Position { colour, shape } => {
                format!("At the {}.", position_words(scene.grid, scene.unique_kind(*colour, *shape)?.cell))
            }
            Asked::Exists { colour, shape } => yes_no(scene.count(Some(*colour), Some(*shape)) > 0),
            Asked::CountIs { n, colour } => yes_no(scene.count(*colour, None) == *n),
            Asked::At { colour, shape, position } => {
                yes_no(&position_words(scene.grid, scene.unique_kind(*colour, *shape)?.cell) == position)
            }
            Asked::ColourIs { shape, colour } => yes_no(scene.unique_shape(*shape)?.colour == *colour),
            Asked::More { more, than } => yes_no(scene.count(Some(*more), None) > scene.count(Some(*than), None)),
        })
    }
}

/// A question of family `kind` that fits `scene`, with its answer; none if it cannot fit.
/// `yes_share` is the chance that a yes/no question is one whose answer is yes.
pub(super) fn ask(
    kind: &str,
    scene: &Scene,
    world: &WorldConfig,
    yes_share: f64,
    rng: &mut StdRng,
) -> Option<Instruction> {
    let asked = match kind {
        "describe" => Asked::Describe,
        "colour" => Asked::Colour { shape: pick(&scene.objects, rng).shape },
        "shape" => Asked::Shape { colour: pick(&scene.objects, rng).colour },
        "count" => Asked::Count { colour: rng.random_bool(0.5).then(|| pick(&world.colours, rng)) },
        "position" => {
            let o = pick(&scene.objects, rng);
            Asked::Position { colour: o.colour, shape: o.shape }
        }
        "yesno" => {
            let subtasks = ["existence", "count", "position", "color", "comparison"];
            let pair = yes_no_pair(pick(&subtasks, rng), scene, world, rng)?;
            let (prompt, answer) =
                if rng.random_bool(yes_share.clamp(0.0, 1.0)) { (pair.yes, "Yes.") } else { (pair.no, "No.") };
            return Some(Instruction { kind: "yesno", prompt, answer: answer.into() });
        }
        _ => return None,
    };
    let answer = asked.truth(scene)?;
    Some(Instruction { kind: static_kind(kind), prompt: asked.text(), answer })
}

fn static_kind(kind: &str) -> &'static str {
    ["describe", "colour", "shape", "count", "position", "yesno"].into_iter().find(|k| *k == kind).unwrap_or("other")
}

/// A true and a false question of one MME-style subtask about `scene`; none if it cannot fit.
pub(super) fn yes_no_pair(subtask: &str, scene: &Scene, world: &WorldConfig, rng: &mut StdRng) -> Option<YesNoPair> {
    let (yes, no) = match subtask {
        "existence" => {
            let o = pick(&scene.objects, rng);
            let absent: Vec<(Colour, Shape)> = world
                .colours
                .iter()
                .flat_map(|c| world.shapes.iter().map(move |s| (*c, *s)))
                .filter(|(c, s)| scene.count(Some(*c), Some(*s)) == 0)
                .collect();
            let (c, s) = *absent.get(rng.random_range(0..absent.len().max(1)))?;
            (Asked::Exists { colour: o.colour, shape: o.shape }, Asked::Exists { colour: c, shape: s })
        }
        "count" => {
            let n = scene.objects.len();
            let wrong: Vec<usize> = (1..=4).filter(|k| *k != n).collect();
            (Asked::CountIs { n, colour: None }, Asked::CountIs { n: pick(&wrong, rng), colour: None })
        }
        "position" => {
            let uniques: Vec<_> =
                scene.objects.iter().filter(|o| scene.unique_kind(o.colour, o.shape).is_some()).collect();
            let o = *uniques.get(rng.random_range(0..uniques.len().max(1)))?;
            let here = position_words(scene.grid, o.cell);
            let others: Vec<String> = (0..scene.grid * scene.grid)
                .map(|c| position_words(scene.grid, (c / scene.grid, c % scene.grid)))
                .filter(|p| *p != here)
                .collect();
            let there = others.get(rng.random_range(0..others.len().max(1)))?.clone();
            (
                Asked::At { colour: o.colour, shape: o.shape, position: here },
                Asked::At { colour: o.colour, shape: o.shape, position: there },
            )
        }
        "color" => {
            let uniques: Vec<_> = scene.objects.iter().filter(|o| scene.unique_shape(o.shape).is_some()).collect();
            let o = *uniques.get(rng.random_range(0..uniques.len().max(1)))?;
            let others: Vec<Colour> = world.colours.iter().copied().filter(|c| *c != o.colour).collect();
            let other = *others.get(rng.random_range(0..others.len().max(1)))?;
            (Asked::ColourIs { shape: o.shape, colour: o.colour }, Asked::ColourIs { shape: o.shape, colour: other })
        }
        "comparison" => {
            let mut colours = world.colours.clone();
            colours.sort_by_key(|c| std::cmp::Reverse(scene.count(Some(*c), None)));
            let counts: Vec<usize> = colours.iter().map(|c| scene.count(Some(*c), None)).collect();
            // A colour with strictly more objects than another.
            let pairs: Vec<(usize, usize)> = (0..colours.len())
                .flat_map(|i| (0..colours.len()).map(move |j| (i, j)))
                .filter(|(i, j)| counts[*i] > counts[*j])
                .collect();
            let (i, j) = *pairs.get(rng.random_range(0..pairs.len().max(1)))?;
            (Asked::More { more: colours[i], than: colours[j] }, Asked::More { more: colours[j], than: colours[i] })
        }
        _ => return None,
    };
    // Both must hold as claimed: the scene decides.
    (yes.truth(scene)? == "Yes." && no.truth(scene)? == "No.").then(|| YesNoPair {
        subtask: ["existence", "count", "position", "color", "comparison"]
            .into_iter()
            .find(|s| *s == subtask)
            .unwrap_or("other"),
        yes: yes.text(),
        no: no.text(),
    })
}

fn colour_word(w: &str) -> Option<Colour> {
    COLOURS.into_iter().find(|c| c.word() == w)
}

fn shape_word(w: &str) -> Option<Shape> {
    SHAPES.into_iter().find(|s| s.word() == w)
}

/// "red square" → (red, square).
fn kind_words(text: &str) -> Option<(Colour, Shape)> {
    let (c, s) = text.split_once(' ')?;
    Some((colour_word(c)?, shape_word(s)?))
}

/// What a question of this world asks; none for text the world does not produce.
pub fn parse_question(text: &str) -> Option<Asked> {
    let t = text.trim();
    let t = t.strip_suffix(YES_NO.trim_start()).map(str::trim_end).unwrap_or(t);
    if t == "Describe the image." {
        return Some(Asked::Describe);
    }
    if let Some(rest) = t.strip_prefix("What colour is the ").and_then(|r| r.strip_suffix('?')) {
        return Some(Asked::Colour { shape: shape_word(rest)? });
    }
    if let Some(rest) = t.strip_prefix("What shape is the ").and_then(|r| r.strip_suffix(" object?")) {
        return Some(Asked::Shape { colour: colour_word(rest)? });
    }
    if t == "How many objects are there?" {
        return Some(Asked::Count { colour: None });
    }
    if let Some(rest) = t.strip_prefix("How many ").and_then(|r| r.strip_suffix(" objects are there?")) {
        return Some(Asked::Count { colour: Some(colour_word(rest)?) });
    }
    if let Some(rest) = t.strip_prefix("Where is the ").and_then(|r| r.strip_suffix('?')) {
        let (colour, shape) = kind_words(rest)?;
        return Some(Asked::Position { colour, shape });
    }
    if let Some(rest) = t.strip_prefix("Is there a ").and_then(|r| r.strip_suffix(" in the image?")) {
        let (colour, shape) = kind_words(rest)?;
        return Some(Asked::Exists { colour, shape });
    }
    if let Some(rest) = t.strip_prefix("Is there one ").and_then(|r| r.strip_suffix(" in the image?")) {
        let colour = if rest == "object" { None } else { Some(colour_word(rest.strip_suffix(" object")?)?) };
        return Some(Asked::CountIs { n: 1, colour });
    }
    if let Some(rest) = t.strip_prefix("Are there more ").and_then(|r| r.strip_suffix(" objects?")) {
        let (more, than) = rest.split_once(" objects than ")?;
        return Some(Asked::More { more: colour_word(more)?, than: colour_word(than)? });
    }
    if let Some(rest) = t.strip_prefix("Are there ").and_then(|r| r.strip_suffix(" in the image?")) {
        let (number, noun) = rest.split_once(' ')?;
        let n = NUMBERS.iter().position(|w| *w == number)?;
        let colour = match noun {
            "objects" => None,
            other => Some(colour_word(other.strip_suffix(" objects")?)?),
        };
        return Some(Asked::CountIs { n, colour });
    }
    if let Some(rest) = t.strip_prefix("Is the ").and_then(|r| r.strip_suffix('?')) {
        if let Some((kind, position)) = rest.split_once(" at the ") {
            let (colour, shape) = kind_words(kind)?;
            return Some(Asked::At { colour, shape, position: position.to_string() });
        }
        let (shape, colour) = rest.split_once(' ')?;
        return Some(Asked::ColourIs { shape: shape_word(shape)?, colour: colour_word(colour)? });
    }
    None
}
