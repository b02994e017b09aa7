//! Provider `oracle`: a judge for the synthetic world that knows the truth. It reads the scene
//! from the request's image (the PNG carries it) and answers in silkie's own judge formats:
//! for the three-aspect annotation template (stages/templates/annotate-3aspect.j2) it rates
//! every answer 1–5 per aspect and replies in the GPT-4V template's text format, so the
//! annotate stage's real parser reads it; for the MMHal judge template it rates the answer 0–6
//! and ends with `Rating: N`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ImageUrls;
use crate::calls::{CallError, CallFuture, CallResult, CallStatus, ChatRequest, Provider};
use crate::eval::synth::{self, Grade, Scene};

pub struct Oracle {
    images: Arc<ImageUrls>,
}

impl Oracle {
    pub fn new(images: Arc<ImageUrls>) -> Oracle {
        Oracle { images }
    }

    fn scene(&self, image: Option<&str>) -> Result<Scene, CallError> {
        let digest =
            image.ok_or_else(|| CallError::Fatal("the oracle judge needs the scene's image in the request".into()))?;
        let bytes = self.images.bytes(digest).map_err(CallError::Fatal)?;
        synth::read_scene(&bytes).ok_or_else(|| {
            CallError::Fatal(format!(
                "image {digest} was not drawn by a `synth` stage: the oracle knows only that world"
            ))
        })
    }

    fn answer(&self, request: &ChatRequest) -> Result<CallResult, CallError> {
        let start = Instant::now();
        let (text, image) = super::prompt_and_image(request);
        let scene = self.scene(image.as_deref())?;
        let reply = if text.contains("<answer 1>") {
            annotation(&scene, &text)?
        } else if text.contains(MMHAL_ANSWER) {
            hallucination(&scene, &text)?
        } else {
            return Err(CallError::Fatal(
                "the oracle judge reads silkie's own judge templates (stages/templates/annotate-3aspect.j2 and the \
                 MMHal judge template); this prompt is neither"
                    .into(),
            ));
        };
        Ok(CallResult {
            status: CallStatus::Ok,
            text: Some(reply),
            finish_reason: Some("stop".into()),
            tokens_in: None,
            tokens_out: None,
            latency_ms: start.elapsed().as_millis() as u64,
            detail: None,
        })
    }
}

impl Provider for Oracle {
    fn send<'a>(&'a self, request: &'a ChatRequest, _timeout: Duration) -> CallFuture<'a> {
        Box::pin(async move { self.answer(request) })
    }
}

const MMHAL_ANSWER: &str = "The assistant's answer:";

/// The text after `Question: ` on its line.
fn question(text: &str) -> Result<&str, CallError> {
    text.lines()
        .find_map(|l| l.strip_prefix("Question: "))
        .map(str::trim)
        .ok_or_else(|| CallError::Fatal("no `Question:` line in the judge prompt".into()))
}

/// The answers between `<answer N>` and `</answer N>`, N = 1, 2, ….
fn answers(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for n in 1.. {
        let (open, close) = (format!("<answer {n}>"), format!("</answer {n}>"));
        let Some(start) = text.find(&open).map(|i| i + open.len()) else { break };
        let Some(end) = text[start..].find(&close).map(|i| start + i) else { break };
        out.push(text[start..end].trim());
    }
    out
}

fn why(grade: u8, aspect: &str) -> String {
    match grade {
        5 => format!("Fully right on {aspect}."),
        4 => format!("Mostly right on {aspect}."),
        3 => format!("Partly right on {aspect}."),
        _ => format!("Poor on {aspect}."),
    }
}

/// An aspect's section title, its rating in a grade, and what it is about.
type Aspect = (&'static str, fn(&Grade) -> u8, &'static str);

/// The three-aspect reply, in the GPT-4V template's format.
fn annotation(scene: &Scene, text: &str) -> Result<String, CallError> {
    let asked = question(text)?;
    let grades: Vec<Grade> = answers(text)
        .into_iter()
        .map(|a| synth::grade_answer(scene, asked, a))
        .collect::<Option<_>>()
        .ok_or_else(|| CallError::Fatal(format!("`{asked}` is not a question of the synthetic world")))?;
    let mut reply = String::new();
    let aspects: [Aspect; 3] = [
        ("Helpfulness", |g| g.helpfulness, "answering the question"),
        ("Visual Faithfulness", |g| g.faithfulness, "matching the image"),
        ("Ethical Considerations", |g| g.ethics, "appropriateness"),
    ];
    for (title, rating, topic) in aspects {
        reply.push_str(&format!("#### {title} Assessment\n"));
        for (i, grade) in grades.iter().enumerate() {
            let r = rating(grade);
            reply.push_str(&format!("##### Output for Text {}\nRating: {r}\nRationale: {}\n", i + 1, why(r, topic)));
        }
        reply.push('\n');
    }
    Ok(reply)
}

/// The MMHal-style 0–6 rating of the answer in the judge prompt.
fn hallucination(scene: &Scene, text: &str) -> Result<String, CallError> {
    let asked = question(text)?;
    let answer = text
        .split(MMHAL_ANSWER)
        .nth(1)
        .map(|rest| rest.split("\n\nRate the answer").next().unwrap_or(rest).trim())
        .unwrap_or_default();
    let score = synth::hallucination_score(scene, asked, answer)
        .ok_or_else(|| CallError::Fatal(format!("`{asked}` is not a question of the synthetic world")))?;
    let verdict = if score >= 3 { "No hallucination." } else { "The answer states things the image does not show." };
    Ok(format!("Explanation: {verdict}\nRating: {score}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::synth::{Colour, Object, Shape};

    fn scene() -> Scene {
        Scene { grid: 2, objects: vec![Object { shape: Shape::Square, colour: Colour::Red, size: None, cell: (0, 0) }] }
    }

    #[test]
    fn annotation_replies_parse_with_the_annotate_stage_parser() {
        let prompt = "Rate these.\n\nQuestion: What colour is the square?\n\n<answer 1>\nRed.\n</answer 1>\n\n<answer 2>\nBlue.\n</answer 2>\n\nReply …";
        let reply = annotation(&scene(), prompt).unwrap();
        let parsed = crate::data::judge::parse_reply(&reply);
        let get = |aspect: &str, answer: usize| parsed[&(aspect.to_string(), answer)].rating.clone();
        assert_eq!((get("visual_faithfulness", 1), get("visual_faithfulness", 2)), ("5".into(), "1".into()));
        assert_eq!((get("helpfulness", 1), get("ethical_considerations", 2)), ("5".into(), "5".into()));
        assert_eq!(parsed.len(), 6);
    }

    #[test]
    fn hallucination_replies_carry_one_rating() {
        let prompt = format!(
            "…\nQuestion: Describe the image.\n\nReference answer: …\n\n{MMHAL_ANSWER} A red square at the top left. A blue circle at the top right.\n\nRate the answer on this scale:"
        );
        let reply = hallucination(&scene(), &prompt).unwrap();
        assert_eq!(crate::eval::mmhal::parse_rating(&reply).score, 1);
    }
}
