//! A full consistency check of the store: every record parses and every blob it reaches
//! exists with the content its digest names.

use std::path::PathBuf;

use super::blobs::hash_reader;
use super::{OutputKind, Result, Store};

/// One inconsistency found by [`Store::verify`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

impl Store {
    /// Checks every stage record against the blobs it names. Slow on big stores: it re-hashes.
    pub fn verify(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for (path, record) in self.all_records()? {
            let Some(record) = record else {
                problems.push(Problem { path, reason: "record does not parse".into() });
                continue;
            };
            for (name, output) in &record.outputs {
                let mut digests = vec![output.digest.clone()];
                if output.kind == OutputKind::Dir {
                    match self.read_dir_manifest(&output.digest) {
                        Ok(manifest) => digests.extend(manifest.files.into_values().map(|e| e.digest)),
                        Err(e) => {
                            problems.push(Problem { path: path.clone(), reason: format!("output `{name}`: {e}") })
                        }
                    }
                }
                for digest in digests {
                    if let Some(reason) = self.check_blob(&digest) {
                        problems.push(Problem { path: path.clone(), reason: format!("output `{name}`: {reason}") });
                    }
                }
            }
        }
        Ok(problems)
    }

    pub(super) fn check_blob(&self, digest: &str) -> Option<String> {
        let blob = match self.open_blob(digest) {
            Ok(blob) => blob,
            Err(_) => return Some(format!("blob {digest} is missing")),
        };
        match hash_reader(blob) {
            Ok((actual, _)) if actual == digest => None,
            Ok((actual, _)) => Some(format!("blob {digest} holds content with digest {actual}")),
            Err(e) => Some(format!("blob {digest} cannot be read: {e}")),
        }
    }
}
