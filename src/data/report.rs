//! The data report a preference-data stage writes beside its tables: rows in, rows out,
//! and every drop counted by reason — so nothing is ever dropped silently.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// Rows read, per input (`responses`, `ratings`, file lines, …).
    pub rows_in: BTreeMap<String, u64>,
    /// Rows written, per output table.
    pub rows_out: BTreeMap<String, u64>,
    /// Rows left out, by reason (`tie`, `unparseable_rating`, `missing_image`, …).
    pub dropped: BTreeMap<String, u64>,
    /// Things kept but worth knowing (`out_of_range_rating`, …).
    pub notes: BTreeMap<String, u64>,
    /// Model calls per model, for stages that make them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<String, CallUsage>,
}

/// What one model's calls took. A function of the calls' results (memo hits included), so
/// the report stays the same however many calls a run had to send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallUsage {
    pub calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// From the model's `runtime` prices, for all these calls; `None` without prices.
    pub cost_usd: Option<f64>,
}

impl DataReport {
    pub fn input(&mut self, name: &str, rows: u64) {
        *self.rows_in.entry(name.to_string()).or_default() += rows;
    }

    pub fn output(&mut self, name: &str, rows: u64) {
        *self.rows_out.entry(name.to_string()).or_default() += rows;
    }

    pub fn drop(&mut self, reason: &str, rows: u64) {
        add(&mut self.dropped, reason, rows);
    }

    pub fn note(&mut self, what: &str, count: u64) {
        add(&mut self.notes, what, count);
    }
}

/// Adds to a counter; called once per dropped row, so it allocates only for a new reason.
fn add(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if n == 0 {
        return;
    }
    match map.get_mut(key) {
        Some(count) => *count += n,
        None => {
            map.insert(key.to_string(), n);
        }
    }
}

impl fmt::Display for DataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let section = |f: &mut fmt::Formatter<'_>, title: &str, map: &BTreeMap<String, u64>| -> fmt::Result {
            if map.is_empty() {
                return writeln!(f, "{title}: none");
            }
            writeln!(f, "{title}:")?;
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in map {
                writeln!(f, "  {k:width$}  {v:>10}")?;
            }
            Ok(())
        };
        section(f, "rows in", &self.rows_in)?;
        section(f, "rows out", &self.rows_out)?;
        section(f, "dropped", &self.dropped)?;
        section(f, "notes", &self.notes)?;
        for (model, u) in &self.calls {
            let cost = u.cost_usd.map(|c| format!(", about ${c:.2}")).unwrap_or_default();
            writeln!(f, "calls to {model}: {}, {} tokens in, {} out{cost}", u.calls, u.tokens_in, u.tokens_out)?;
        }
        Ok(())
    }
}
