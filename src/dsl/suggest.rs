//! Helping messages: "did you mean …?" for misspelt keys, stages, kinds and references, and
//! long values cut short so they cannot flood a terminal.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Help text for an unknown name.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    nearest(word, candidates).map(|n| format!("did you mean `{n}`?"))
}

/// `s` quoted for a message, cut to its first `max` characters (saying how many more there
/// were), so a huge value cannot flood a terminal or a log.
pub fn elide(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}… ({} more characters)", &s[..end], s[end..].chars().count()),
    }
}

/// `s` as it is when short, else its first `max` characters and how many more there were:
/// for text shown between backticks (a command), where quoting would escape its quotes.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((end, _)) => format!("{}… ({} more characters)", &s[..end], s[end..].chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_words_only() {
        assert_eq!(nearest("scroes", ["scores", "pairs"]), Some("scores"));
        assert_eq!(nearest("kindd", ["kind", "needs"]), Some("kind"));
        assert_eq!(nearest("zzzzzz", ["kind", "needs"]), None);
    }
}
