//! The judge-reply parser on the forms judges write.

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
    let reply =
        "#### Visual Faithfulness Assessment\n##### Output for Text 1\nRating: 2\n##### Output for Text 2\nRating: 4\n";
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
    let reply =
        "#### Helpfulness Assessment\n##### Output for Text 1\nRating: N/A\n##### Output for Text 2\nRating: four\n";
    assert_eq!(ratings(reply), [r(H, 1, "N/A"), r(H, 2, "four")]);
}

#[test]
fn incomplete_replies_say_what_is_missing() {
    let reply = "#### Helpfulness Assessment\n##### Output for Text 1\nRating: 4\n";
    let aspects = vec![H.to_string(), V.to_string()];
    assert_eq!(missing(&parse_reply(reply), &aspects, 2), [(H.to_string(), 2), (V.to_string(), 1), (V.to_string(), 2)]);
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
    for (text, value) in [("4", Some(4.0)), ("1", Some(1.0)), ("7", None), ("0", None), ("-2", None), ("10", None)] {
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
