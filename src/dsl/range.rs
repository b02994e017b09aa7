//! The values a numeric setting may take, checked at validation so that a run never starts
//! with a setting that panics, hangs or trains nonsense — and said in the message.

use super::Issue;

/// An interval of allowed values, written in messages as `0 < lr ≤ 1`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// (bound, inclusive)
    low: Option<(f64, bool)>,
    high: Option<(f64, bool)>,
}

impl Range {
    /// Values above `x`.
    pub const fn above(x: f64) -> Range {
        Range { low: Some((x, false)), high: None }
    }

    /// `x` and above.
    pub const fn at_least(x: f64) -> Range {
        Range { low: Some((x, true)), high: None }
    }

    /// ... and below `y`.
    pub const fn below(self, y: f64) -> Range {
        Range { high: Some((y, false)), ..self }
    }

    /// ... up to `y`.
    pub const fn at_most(self, y: f64) -> Range {
        Range { high: Some((y, true)), ..self }
    }

    pub fn contains(&self, value: f64) -> bool {
        let low_ok = self.low.is_none_or(|(x, inclusive)| if inclusive { value >= x } else { value > x });
        let high_ok = self.high.is_none_or(|(y, inclusive)| if inclusive { value <= y } else { value < y });
        value.is_finite() && low_ok && high_ok
    }

    /// The setting at `path` (its last key names it in the message) must lie in the range.
    pub fn check(&self, path: &str, value: f64) -> Result<(), Issue> {
        if self.contains(value) {
            return Ok(());
        }
        let name = path.rsplit('.').next().unwrap_or(path);
        Err(Issue::new(path, format!("{} is out of range: expected {}", number(value), self.describe(name))))
    }

    /// Like [`Range::check`], for a setting that may be left out.
    pub fn check_some(&self, path: &str, value: Option<f64>) -> Result<(), Issue> {
        value.map_or(Ok(()), |v| self.check(path, v))
    }

    fn describe(&self, name: &str) -> String {
        let low = self.low.map(|(x, inclusive)| format!("{x} {} ", if inclusive { "≤" } else { "<" }));
        let high = self.high.map(|(y, inclusive)| format!(" {} {y}", if inclusive { "≤" } else { "<" }));
        format!("{}{name}{}", low.unwrap_or_default(), high.unwrap_or_default())
    }
}

/// A number as people write it: `1e300`, not three hundred digits.
fn number(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e9).contains(&x.abs()) { format!("{x:e}") } else { x.to_string() }
}

#[cfg(test)]
mod tests {
    use super::Range;

    #[test]
    fn bounds_and_messages() {
        let lr = Range::above(0.0).at_most(1.0);
        assert!(lr.contains(1.0) && lr.contains(1e-6));
        assert!(!lr.contains(0.0) && !lr.contains(-1.0) && !lr.contains(f64::NAN) && !lr.contains(f64::INFINITY));
        let issue = lr.check("stages.dpo.params.lr", -1.0).unwrap_err();
        assert_eq!(issue.path, "stages.dpo.params.lr");
        assert_eq!(issue.message, "-1 is out of range: expected 0 < lr ≤ 1");
        let share = Range::at_least(0.0).below(1.0);
        assert!(share.contains(0.0) && !share.contains(1.0));
        assert_eq!(Range::at_least(1.0).check("n", 0.0).unwrap_err().message, "0 is out of range: expected 1 ≤ n");
        assert!(Range::above(0.0).at_most(86_400.0).check("t", 1e300).unwrap_err().message.starts_with("1e300 is"));
    }
}
