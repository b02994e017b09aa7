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

/// The first code point of every run of ten Unicode decimal digits (category Nd), from
/// Python's `unicodedata`: `float()` reads any of them as the digit it stands for.
const DIGIT_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
    0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0,
    0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// A decimal digit of any script as its ASCII digit; anything else unchanged.
fn ascii_digit(c: char) -> char {
    if c.is_ascii() || !c.is_numeric() {
        return c;
    }
    let code = c as u32;
    DIGIT_ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&code))
        .and_then(|zero| char::from_digit(code - zero, 10))
        .unwrap_or(c)
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
    let ascii: String = text.trim_matches(python_space).chars().map(ascii_digit).collect();
    let s = ascii.as_str();
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
            ("\u{664}", 4.0),
            ("\u{FF14}.\u{FF15}", 4.5),
            ("\u{967}\u{966}", 10.0),
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
