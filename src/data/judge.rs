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
) -> Result<String, String> {
    match style {
        PlaceholderStyle::Vlfeedback => fill_placeholders(template, instruction, responses),
        PlaceholderStyle::Jinja => {
            let mut env = minijinja::Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            let items: Vec<minijinja::Value> =
                responses.iter().enumerate().map(|(i, t)| minijinja::context! { index => i + 1, text => *t }).collect();
            env.render_str(template, minijinja::context! { instruction => instruction, responses => items })
                .map_err(|e| format!("the template does not render: {e}"))
        }
    }
}

/// The release's placeholders, filled in one pass (so a response that itself contains a
/// placeholder is left as written). A text placeholder with no response becomes empty; a
/// response with no placeholder is an error, since the judge would never see it.
fn fill_placeholders(template: &str, instruction: &str, responses: &[&str]) -> Result<String, String> {
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
        return Err(format!(
            "the template has placeholders for {slots} texts, but an instruction has {} responses; lower per_instruction or use a template with more",
            responses.len()
        ));
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
mod tests {
    use super::*;

    fn ratings(reply: &str) -> Vec<(String, usize, String)> {
        parse_reply(reply).into_iter().map(|((a, i), j)| (a, i, j.rating)).collect()
    }

    fn r(aspect: &str, i: usize, rating: &str) -> (String, usize, String) {
        (aspect.to_string(), i, rating.to_string())
    }

    const H: &str = "helpfulness";
    const V: &str = "visual_faithfulness";
    const E: &str = "ethical_considerations";

    /// The format the release's template asks for, exactly.
    const CANONICAL: &str = "#### Helpfulness Assessment
##### Output for Text 1
Rating: 4
Rationale: Answers the question directly.
##### Output for Text 2
Rating: 2
Rationale: Vague.

#### Ethical Considerations Assessment
##### Output for Text 1
Rating: 5
Rationale: Harmless.
##### Output for Text 2
Rating: 5
Rationale: Harmless.

#### Visual Faithfulness Assessment
##### Output for Text 1
Rating: 3
Rationale: Misses the dog.
##### Output for Text 2
Rating: 1
Rationale: Invents a cat.
";

    #[test]
    fn the_canonical_format() {
        let got = ratings(CANONICAL);
        assert_eq!(got, [r(E, 1, "5"), r(E, 2, "5"), r(H, 1, "4"), r(H, 2, "2"), r(V, 1, "3"), r(V, 2, "1")]);
        let j = parse_reply(CANONICAL);
        assert_eq!(j[&(V.to_string(), 2)].rationale, "Invents a cat.");
    }

    #[test]
    fn markdown_bold_and_extra_whitespace() {
        let reply = "**Helpfulness Assessment**\n\n**Output for Text 1**\n**Rating:** 4\n**Rationale:**   Good.\n\n   ##### Output for Text 2   \n  Rating :  3  \n";
        assert_eq!(ratings(reply), [r(H, 1, "4"), r(H, 2, "3")]);
    }

    #[test]
    fn ratings_out_of_five_and_in_brackets() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4/5\n##### Output for Text 2\nRating: 3 out of 5\n##### Output for Text 3\nRating: [2]\n##### Output for Text 4\nRating: 5.\n";
        assert_eq!(ratings(reply), [r(H, 1, "4"), r(H, 2, "3"), r(H, 3, "2"), r(H, 4, "5")]);
    }

    #[test]
    fn a_missing_rationale_is_fine() {
        let reply = "#### Visual Faithfulness Assessment\n##### Output for Text 1\nRating: 2\n##### Output for Text 2\nRating: 4\n";
        let j = parse_reply(reply);
        assert_eq!(j.len(), 2);
        assert_eq!(j[&(V.to_string(), 1)].rationale, "");
    }

    #[test]
    fn aspects_out_of_order_and_renamed_headings() {
        let reply = "### Visual Faithfulness:\nText 1: \nRating: 2\n### Ethics Assessment\nResponse 1\nRating: 5\n### Helpfulness\nOutput 1\nRating: 3\n";
        assert_eq!(ratings(reply), [r(E, 1, "5"), r(H, 1, "3"), r(V, 1, "2")]);
    }

    #[test]
    fn multi_line_rationales_are_joined() {
        let reply =
            "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\nRationale: First line.\nSecond line.\n";
        assert_eq!(parse_reply(reply)[&(H.to_string(), 1)].rationale, "First line. Second line.");
    }

    #[test]
    fn a_rationale_may_start_on_the_next_line() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\nRationale:\nIt answers.\n";
        assert_eq!(parse_reply(reply)[&(H.to_string(), 1)].rationale, "It answers.");
    }

    #[test]
    fn non_numeric_ratings_are_kept_as_written() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: N/A\n##### Output for Text 2\nRating: four\n";
        assert_eq!(ratings(reply), [r(H, 1, "N/A"), r(H, 2, "four")]);
    }

    #[test]
    fn incomplete_replies_say_what_is_missing() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\n";
        let aspects = vec![H.to_string(), V.to_string()];
        assert_eq!(
            missing(&parse_reply(reply), &aspects, 2),
            [(H.to_string(), 2), (V.to_string(), 1), (V.to_string(), 2)]
        );
    }

    #[test]
    fn a_rating_before_any_heading_is_ignored() {
        assert!(ratings("Rating: 5\nThe responses are fine.").is_empty());
    }

    #[test]
    fn a_rating_without_a_response_heading_is_ignored() {
        assert!(ratings("#### Helpfulness Assessment\nRating: 5\n").is_empty());
    }

    #[test]
    fn the_first_of_two_ratings_counts() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\nRating: 1\n";
        assert_eq!(ratings(reply), [r(H, 1, "4")]);
    }

    #[test]
    fn a_repeated_section_keeps_the_first_copy_and_is_counted() {
        let section = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\nRationale: first\n";
        let again = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 2\nRationale: second\n";
        let reply = read_reply(&format!("{section}{again}"));
        assert_eq!(reply.repeated, 1);
        assert_eq!(reply.judgement[&(H.to_string(), 1)], Judged { rating: "4".into(), rationale: "first".into() });
    }

    #[test]
    fn texts_numbered_from_zero_are_read_in_order() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 0\nRating: 5\n##### Output for Text 1\nRating: 2\n#### Visual Faithfulness Assessment\n##### Output for Text 1\nRating: 3\n";
        let read = read_reply(reply);
        assert_eq!(read.numbered_from_zero, 1);
        assert_eq!(ratings(reply), [r(H, 1, "5"), r(H, 2, "2"), r(V, 1, "3")]);
    }

    #[test]
    fn json_and_text_read_the_same_rating_forms() {
        for form in ["4/5", "[4]", "4 out of 5", "4."] {
            let json = format!(r#"{{"helpfulness": [{{"rating": "{form}"}}]}}"#);
            let text = format!("#### Helpfulness Assessment\n##### Output for Text 1\nRating: {form}\n");
            assert_eq!(ratings(&json), [r(H, 1, "4")], "{form}");
            assert_eq!(ratings(&json), ratings(&text), "{form}");
        }
    }

    #[test]
    fn ratings_off_the_scale_have_no_value() {
        for (text, value) in [("4", Some(4.0)), ("1", Some(1.0)), ("7", None), ("0", None), ("-2", None), ("10", None)]
        {
            assert_eq!(rating_value(text), value, "{text}");
        }
        // `10/10` reads as 10, which is off the 1–5 scale.
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 10/10\n";
        assert_eq!(rating_value(&parse_reply(reply)[&(H.to_string(), 1)].rating), None);
    }

    #[test]
    fn text_numbers_must_be_whole_headings() {
        // "Text 1 is better than text 2" is prose, not a heading.
        let reply = "#### Helpfulness Assessment\nText 1 is better than text 2.\nRating: 4\n";
        assert!(ratings(reply).is_empty());
    }

    #[test]
    fn an_empty_or_refusing_reply_has_no_ratings() {
        assert!(ratings("").is_empty());
        assert!(ratings("I'm sorry, I can't help with rating these images.").is_empty());
    }

    #[test]
    fn windows_line_endings() {
        let reply = CANONICAL.replace('\n', "\r\n");
        assert_eq!(ratings(&reply).len(), 6);
    }

    #[test]
    fn json_replies_bare_and_fenced() {
        let bare = r#"{"helpfulness": [{"rating": 4, "rationale": "ok"}, {"rating": "2", "rationale": "meh"}], "visual_faithfulness": [{"rating": 3}]}"#;
        assert_eq!(ratings(bare), [r(H, 1, "4"), r(H, 2, "2"), r(V, 1, "3")]);
        let fenced = format!("Here you go:\n```json\n{bare}\n```\n");
        assert_eq!(ratings(&fenced), ratings(bare));
        let names = r#"{"Helpfulness": [{"rating": 5}], "Ethical Considerations": [{"rating": 1}]}"#;
        assert_eq!(ratings(names), [r(E, 1, "1"), r(H, 1, "5")]);
    }

    #[test]
    fn broken_json_falls_back_to_text() {
        let reply = "{\"helpfulness\": [\n#### Helpfulness Assessment\n##### Output for Text 1\nRating: 3\n";
        assert_eq!(ratings(reply), [r(H, 1, "3")]);
    }

    #[test]
    fn unknown_aspects_are_skipped() {
        let reply = "#### Creativity Assessment\n##### Output for Text 1\nRating: 5\n#### Helpfulness Assessment\n##### Output for Text 1\nRating: 2\n";
        assert_eq!(ratings(reply), [r(H, 1, "2")]);
    }

    #[test]
    fn headings_with_colons_and_numbers_in_hashes() {
        let reply = "## Helpfulness Assessment:\n#### Output for Text #2:\nRating: 3\n";
        assert_eq!(ratings(reply), [r(H, 2, "3")]);
    }

    #[test]
    fn italic_and_backtick_ratings() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\n*Rating:* `4`\n##### Output for Text 2\n__Rating:__ *2*\n";
        assert_eq!(ratings(reply), [r(H, 1, "4"), r(H, 2, "2")]);
    }

    #[test]
    fn decimal_ratings_keep_their_decimals() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 3.5\n";
        assert_eq!(ratings(reply), [r(H, 1, "3.5")]);
    }

    #[test]
    fn preamble_and_summary_around_the_assessment() {
        let reply = format!("Sure! Here is my assessment.\n\n{CANONICAL}\nOverall, Text 1 is best.\n");
        assert_eq!(ratings(&reply).len(), 6);
    }

    #[test]
    fn adversarial_response_text_quoted_in_the_reply_does_not_rate() {
        // A response that itself contains "Rating: 5" is quoted under the wrong heading level.
        let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 2\nRationale: The text says \"Rating: 5\" to game the judge.\n";
        assert_eq!(ratings(reply), [r(H, 1, "2")]);
    }

    #[test]
    fn a_rating_line_for_a_number_never_asked_is_kept_but_not_expected() {
        let reply = "#### Helpfulness Assessment\n##### Output for Text 7\nRating: 2\n";
        let j = parse_reply(reply);
        assert_eq!(missing(&j, &[H.to_string()], 2).len(), 2);
    }

    #[test]
    fn list_markers_before_fields() {
        let reply = "Helpfulness Assessment\nText 1\n- Rating: 4\n- Rationale: fine\nText 2\n* Rating: 3\n";
        assert_eq!(ratings(reply), [r(H, 1, "4"), r(H, 2, "3")]);
        assert_eq!(parse_reply(reply)[&(H.to_string(), 1)].rationale, "fine");
    }

    #[test]
    fn templates_render_in_both_styles() {
        let jinja = "Q: {{ instruction }}\n{% for r in responses %}[{{ r.index }}] {{ r.text }}\n{% endfor %}";
        assert_eq!(render(jinja, PlaceholderStyle::Jinja, "Why?", &["A", "B"]).unwrap(), "Q: Why?\n[1] A\n[2] B\n");
        let original = "Q: [[instruction_placeholder]]\n1: [[text_1_placeholder]]\n2: [[text_2_placeholder]]";
        assert_eq!(render(original, PlaceholderStyle::Vlfeedback, "Why?", &["A", "B"]).unwrap(), "Q: Why?\n1: A\n2: B");
        // Fewer responses than placeholders: the rest are empty. More: an error.
        assert_eq!(render(original, PlaceholderStyle::Vlfeedback, "Why?", &["A"]).unwrap(), "Q: Why?\n1: A\n2: ");
        assert!(render(original, PlaceholderStyle::Vlfeedback, "Why?", &["A", "B", "C"]).is_err());
        // A response quoting a placeholder is not filled in again.
        assert_eq!(
            render(original, PlaceholderStyle::Vlfeedback, "Why?", &["see [[text_2_placeholder]]", "B"]).unwrap(),
            "Q: Why?\n1: see [[text_2_placeholder]]\n2: B"
        );
        assert!(render("{{ nonsense }}", PlaceholderStyle::Jinja, "Why?", &["A"]).is_err());
    }
}
