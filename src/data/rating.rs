//! Ratings as the released VLFeedback recipe reads them: a rating string counts when
//! Python's `float()` parses it as a finite number.

/// The three aspects of the Silkie judge, by id.
pub const ASPECTS: [&str; 3] = ["helpfulness", "visual_faithfulness", "ethical_considerations"];

/// Maps VLFeedback's annotation names ("Visual Faithfulness", …) onto aspect ids.
pub fn aspect_id(name: &str) -> Option<&'static str> {
    let folded: String = name.trim().chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
    match folded.as_str() {
        "helpfulness" => Some(ASPECTS[0]),
        "visualfaithfulness" => Some(ASPECTS[1]),
        "ethicalconsiderations" | "ethics" => Some(ASPECTS[2]),
        _ => None,
    }
}

/// Python's `str.isspace()`, which `float()` strips on both sides.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `digit (["_"] digit)*`: underscores only between digits.
fn digit_part(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars().all(|c| c.is_ascii_digit() || c == '_')
}

/// The value of a rating string, or `None` when `float()` would reject it or give a
/// non-finite number ("N/A", "", "four", "4/5", "nan", "inf").
pub fn parse_rating(text: &str) -> Option<f64> {
    let s = text.trim_matches(python_space);
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() || digit_part(int))
                && (frac.is_empty() || digit_part(frac))
                && !(int.is_empty() && frac.is_empty())
        }
        None => digit_part(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digit_part(e.strip_prefix(['+', '-']).unwrap_or(e)));
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    s.replace('_', "").parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_python_float_accepts() {
        for (text, value) in [
            ("4", 4.0),
            (" 4", 4.0),
            ("4.0", 4.0),
            ("\t5\n", 5.0),
            ("+3", 3.0),
            ("-1", -1.0),
            ("4.", 4.0),
            (".5", 0.5),
            ("1e0", 1.0),
            ("2E+0", 2.0),
            ("1_0", 10.0),
            ("7", 7.0),
            ("\u{a0}3\u{2003}", 3.0),
        ] {
            assert_eq!(parse_rating(text), Some(value), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_python_rejects_and_non_finite_values() {
        for text in [
            "",
            " ",
            "N/A",
            "n/a",
            "four",
            "4/5",
            "4 / 5",
            "4.0.0",
            "1__0",
            "_1",
            "1_",
            "1e",
            ".",
            "e5",
            "4 5",
            "nan",
            "inf",
            "-Infinity",
            "1e999",
            "Rating: 4",
            "0x4",
        ] {
            assert_eq!(parse_rating(text), None, "{text:?}");
        }
    }

    #[test]
    fn aspect_names_map_to_ids() {
        assert_eq!(aspect_id("Helpfulness"), Some("helpfulness"));
        assert_eq!(aspect_id("Visual Faithfulness"), Some("visual_faithfulness"));
        assert_eq!(aspect_id("Ethical Considerations"), Some("ethical_considerations"));
        assert_eq!(aspect_id("visual_faithfulness"), Some("visual_faithfulness"));
        assert_eq!(aspect_id("Harmlessness"), None);
    }
}
