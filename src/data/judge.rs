//! The AI judge: rendering its prompt from a template, and reading its reply.
//!
//! The reply format is the one the VLFeedback GPT-4V template asks for — per aspect a
//! `#### <Aspect> Assessment` heading, then per response `##### Output for Text i`,
//! `Rating: N`, `Rationale: …` — read tolerantly: markdown emphasis, extra whitespace,
//! `Rating: 4/5`, a missing rationale, aspects in any order. A JSON reply
//! (`{"helpfulness": [{"rating": 4, "rationale": "…"}, …], …}`, bare or in a ```json fence)
//! is read too, for judges with structured output.

use std::collections::BTreeMap;

use serde_json::Value;

use super::rating::{ASPECTS, aspect_id};

/// Why a judge template does not give a prompt.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the template does not render: {0}")]
    Render(#[from] minijinja::Error),
    #[error(
        "the template has placeholders for {slots} texts, but an instruction has {responses} responses; lower \
         per_instruction or use a template with more"
    )]
    TooFewSlots { slots: usize, responses: usize },
}

/// How a template marks where the instruction and the responses go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlaceholderStyle {
    /// minijinja: `{{ instruction }}`, `{% for r in responses %}{{ r.index }} {{ r.text }}{% endfor %}`.
    #[default]
    Jinja,
    /// The original release: `[[instruction_placeholder]]`, `[[text_1_placeholder]]` … `[[text_4_placeholder]]`.
    Vlfeedback,
}

/// Fills a judge template with an instruction and its responses (numbered from 1).
pub fn render(
    template: &str,
    style: PlaceholderStyle,
    instruction: &str,
    responses: &[&str],
) -> Result<String, TemplateError> {
    match style {
        PlaceholderStyle::Vlfeedback => fill_placeholders(template, instruction, responses),
        PlaceholderStyle::Jinja => {
            let mut env = minijinja::Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            let items: Vec<minijinja::Value> =
                responses.iter().enumerate().map(|(i, t)| minijinja::context! { index => i + 1, text => *t }).collect();
            Ok(env.render_str(template, minijinja::context! { instruction => instruction, responses => items })?)
        }
    }
}

/// The release's placeholders, filled in one pass (so a response that itself contains a
/// placeholder is left as written). A text placeholder with no response becomes empty; a
/// response with no placeholder is an error, since the judge would never see it.
fn fill_placeholders(template: &str, instruction: &str, responses: &[&str]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut slots = 0;
    while let Some(at) = rest.find("[[") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find("]]") else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let name = &tail[2..end];
        let text_slot = name
            .strip_prefix("text_")
            .and_then(|n| n.strip_suffix("_placeholder"))
            .and_then(|n| n.parse::<usize>().ok());
        match (name, text_slot) {
            ("instruction_placeholder", _) => out.push_str(instruction),
            (_, Some(n)) if n >= 1 => {
                slots = slots.max(n);
                out.push_str(responses.get(n - 1).copied().unwrap_or_default());
            }
            _ => out.push_str(&tail[..end + 2]),
        }
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    if responses.len() > slots {
        return Err(TemplateError::TooFewSlots { slots, responses: responses.len() });
    }
    Ok(out)
}

/// One rating as the judge wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The rating text after `Rating:` (`"4"`, `"4/5"` → `"4"`, `"N/A"`).
    pub rating: String,
    pub rationale: String,
}

/// (aspect id, response number from 1) → rating.
pub type Judgement = BTreeMap<(String, usize), Judged>;

/// The judge's scale: a rating outside it (`7`, `0`, `10/10`) is kept as text and counted,
/// never averaged.
pub const RATING_SCALE: std::ops::RangeInclusive<f64> = 1.0..=5.0;

/// The value of a rating the judge wrote, when it is a number on the scale.
pub fn rating_value(text: &str) -> Option<f64> {
    super::rating::parse_rating(text).filter(|v| RATING_SCALE.contains(v))
}

/// A judge reply as read, with what was odd about it.
#[derive(Debug, Default)]
pub struct Reply {
    pub judgement: Judgement,
    /// Ratings given again for a response and aspect already rated (the first counts).
    pub repeated: u64,
    /// Aspects whose texts the judge numbered from 0; they are read in order (0 is the first).
    pub numbered_from_zero: u64,
}

/// Reads a judge reply. What is not there is simply absent; the caller decides to re-ask.
pub fn read_reply(reply: &str) -> Reply {
    parse_json(reply).unwrap_or_else(|| parse_text(reply))
}

/// The ratings of a judge reply (see [`read_reply`]).
pub fn parse_reply(reply: &str) -> Judgement {
    read_reply(reply).judgement
}

/// Which of the expected (aspect, response) ratings a judgement lacks.
pub fn missing(judgement: &Judgement, aspects: &[String], responses: usize) -> Vec<(String, usize)> {
    let mut absent = Vec::new();
    for aspect in aspects {
        for i in 1..=responses {
            if !judgement.contains_key(&(aspect.clone(), i)) {
                absent.push((aspect.clone(), i));
            }
        }
    }
    absent
}

fn parse_json(reply: &str) -> Option<Reply> {
    let body = match reply.find("```") {
        Some(start) => {
            let after = &reply[start + 3..];
            let after = after.strip_prefix("json").unwrap_or(after);
            &after[..after.find("```")?]
        }
        None => reply,
    };
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let object = value.as_object()?;
    let mut out = Reply::default();
    for (name, entries) in object {
        let Some(aspect) = aspect_id(name) else { continue };
        for (i, entry) in entries.as_array()?.iter().enumerate() {
            // The forms the text path reads (`4/5`, `[4]`) read the same here.
            let rating = match entry.get("rating") {
                Some(Value::String(s)) => rating_text(s),
                Some(Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            let rationale = entry.get("rationale").and_then(Value::as_str).unwrap_or_default().to_string();
            out.add((aspect.to_string(), i + 1), Judged { rating, rationale });
        }
    }
    (!out.judgement.is_empty()).then_some(out)
}

impl Reply {
    /// Keeps the first rating of each (aspect, response), counting the others.
    fn add(&mut self, key: (String, usize), judged: Judged) -> bool {
        match self.judgement.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => {
                self.repeated += 1;
                false
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(judged);
                true
            }
        }
    }

    /// An aspect whose texts start at 0 was numbered from 0 by the judge: its texts move up
    /// by one, so the first text's rating is the first response's.
    fn number_from_one(&mut self) {
        let zero_based: Vec<String> =
            self.judgement.keys().filter(|(_, n)| *n == 0).map(|(aspect, _)| aspect.clone()).collect();
        for aspect in zero_based {
            let keys: Vec<(String, usize)> = self.judgement.keys().filter(|(a, _)| *a == aspect).cloned().collect();
            let moved: Vec<((String, usize), Judged)> =
                keys.into_iter().filter_map(|k| self.judgement.remove_entry(&k)).collect();
            for ((a, n), judged) in moved {
                self.judgement.insert((a, n + 1), judged);
            }
            self.numbered_from_zero += 1;
        }
    }
}

/// A line without markdown emphasis and heading marks, trimmed.
fn plain(line: &str) -> String {
    let no_emphasis: String = line.replace("**", "").replace("__", "");
    let mut s = no_emphasis.trim().trim_start_matches('#').trim();
    // List markup before a field: `- Rating: 4`, `* Rating: 4`, `• Rating: 4`.
    for bullet in ["- ", "* ", "• "] {
        s = s.strip_prefix(bullet).unwrap_or(s);
    }
    s.trim().trim_matches('*').trim().to_string()
}

/// `Helpfulness Assessment`, `Visual Faithfulness:` → the aspect id.
fn aspect_heading(line: &str) -> Option<&'static str> {
    let lowered = line.to_lowercase();
    let name = lowered.trim_end_matches(':').trim();
    let name = name.strip_suffix("assessment").unwrap_or(name).trim().trim_end_matches(':').trim();
    ASPECTS.iter().find(|a| aspect_id(name) == Some(**a)).copied()
}

/// `Output for Text 2`, `Text 2:`, `Response 2` → 2 (and `Text 0` → 0, see [`Reply::number_from_one`]).
fn response_heading(line: &str) -> Option<usize> {
    let lowered = line.to_lowercase();
    let rest = ["output for text", "text", "response", "output"].iter().find_map(|p| lowered.strip_prefix(p))?;
    let digits: String = rest.trim().trim_start_matches(['#', ' ']).chars().take_while(char::is_ascii_digit).collect();
    let after = rest.trim().trim_start_matches(['#', ' '])[digits.len()..].trim();
    if !(after.is_empty() || after == ":") {
        return None;
    }
    digits.parse().ok()
}

/// The value after a `Label:` prefix (case-insensitive).
fn field<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let head = line.get(..label.len())?;
    if !head.eq_ignore_ascii_case(label) {
        return None;
    }
    line[label.len()..].trim_start().strip_prefix(':').map(str::trim)
}

/// `4`, `4/5`, `4 out of 5`, `[4]`, `4.`, `N/A` → the rating's own text.
fn rating_text(value: &str) -> String {
    let v = value.trim_matches(|c: char| c.is_whitespace() || "[]*`_".contains(c));
    let number: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let number = number.trim_end_matches('.');
    if number.is_empty() { v.to_string() } else { number.to_string() }
}

fn parse_text(reply: &str) -> Reply {
    let mut out = Reply::default();
    let mut aspect: Option<&str> = None;
    let mut response: Option<usize> = None;
    let mut open: Option<(String, usize)> = None;
    let mut in_rationale = false;
    for raw in reply.lines() {
        let line = plain(raw);
        if line.is_empty() {
            continue;
        }
        if let Some(a) = aspect_heading(&line) {
            aspect = Some(a);
            response = None;
            open = None;
            in_rationale = false;
            continue;
        }
        if let Some(n) = response_heading(&line) {
            response = Some(n);
            open = None;
            in_rationale = false;
            continue;
        }
        if let Some(value) = field(&line, "rating") {
            in_rationale = false;
            if let (Some(a), Some(n)) = (aspect, response) {
                let key = (a.to_string(), n);
                // The first rating given for a response counts; a repeated section's rationale
                // does not overwrite the first one's.
                let first = out.add(key.clone(), Judged { rating: rating_text(value), rationale: String::new() });
                open = first.then_some(key);
            }
            continue;
        }
        if let Some(value) = field(&line, "rationale") {
            if let Some(judged) = open.as_ref().and_then(|k| out.judgement.get_mut(k)) {
                judged.rationale = value.to_string();
                in_rationale = true;
            }
            continue;
        }
        // A rationale running over several lines, or starting on the line after its label.
        if let Some(judged) = open.as_ref().and_then(|k| out.judgement.get_mut(k))
            && in_rationale
        {
            if !judged.rationale.is_empty() {
                judged.rationale.push(' ');
            }
            judged.rationale.push_str(&line);
        }
    }
    out.number_from_one();
    out
}

#[cfg(test)]
mod tests;
