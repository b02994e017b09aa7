//! Workspace paths the instances write and read. Two instances may not write one path (the
//! file would flip between no-op runs, each run restoring the other's copy), and an instance
//! may not write a path another one reads unless the reader needs the writer — an `export`
//! over the file its own upstream `load` reads would make every run stale.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::has_path_connecting;
use petgraph::graph::{DiGraph, NodeIndex};

use super::Instance;
use crate::dsl::Issue;

/// A path as its normal components (`./out//a.csv` → `[out, a.csv]`), so that spellings of
/// one path compare equal and a directory is a prefix of what it holds.
fn components(path: &str) -> Vec<String> {
    let root = path.starts_with('/').then(|| "/".to_string());
    root.into_iter().chain(path.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").map(String::from)).collect()
}

/// The path the message names: the shorter of the two, which holds the other.
fn shown(a: &[String], b: &[String]) -> String {
    let path = if a.len() <= b.len() { a } else { b };
    path.join("/").replacen("//", "/", 1)
}

/// The first writer of `path`, of a directory holding it, or of something inside it, that is
/// not `node`.
fn overlapping(
    writers: &BTreeMap<Vec<String>, NodeIndex>,
    path: &[String],
    node: NodeIndex,
) -> Option<(Vec<String>, NodeIndex)> {
    let holding = (1..=path.len()).filter_map(|n| writers.get_key_value(&path[..n]));
    let inside = writers.range(path.to_vec()..).take_while(|(p, _)| p.starts_with(path));
    holding.chain(inside).find(|(_, other)| **other != node).map(|(p, other)| (p.clone(), *other))
}

/// Every clash, once per pair of stages (a matrix stage would repeat it per instance).
pub fn check(graph: &DiGraph<Instance, ()>) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    let mut report = |a: &Instance, b: &Instance, issue: Issue| {
        if reported.insert((a.stage.clone(), b.stage.clone())) {
            issues.push(issue);
        }
    };
    let mut writers: BTreeMap<Vec<String>, NodeIndex> = BTreeMap::new();
    for node in graph.node_indices() {
        for out in graph[node].stage_impl.workspace_outputs() {
            let path = components(&out);
            if let Some((theirs, other)) = overlapping(&writers, &path, node) {
                let (first, second) = (&graph[other], &graph[node]);
                let who = if first.stage == second.stage {
                    format!("two instances of `{}`, `{}` and `{}`", first.stage, first.name, second.name)
                } else {
                    format!("both `{}` and `{}`", first.name, second.name)
                };
                let message = format!(
                    "`{}` is written by {who}; a path may have one writer, or each run would undo the other's",
                    shown(&path, &theirs)
                );
                let help = (first.stage == second.stage)
                    .then(|| "put the matrix values in the path, as in `out/${matrix.seed}.csv`".to_string());
                report(first, second, Issue::new(format!("stages.{}.params", second.stage), message).with_help(help));
            } else {
                writers.insert(path, node);
            }
        }
    }
    for node in graph.node_indices() {
        let reader = &graph[node];
        for file in reader.stage_impl.key_files() {
            let path = components(&file.to_string_lossy());
            let Some((theirs, writer)) = overlapping(&writers, &path, node) else { continue };
            if has_path_connecting(graph, writer, node, None) {
                continue; // the reader runs after the writer and sees what it wrote
            }
            let message = format!(
                "`{}` is read by `{}` and written by `{}`, which `{}` does not need: each run would change what `{}` read",
                shown(&path, &theirs),
                reader.name,
                graph[writer].name,
                reader.stage,
                reader.stage,
            );
            let help = Some(format!(
                "write `{}`'s output elsewhere, or list `{}` in `needs` of `{}` if it should read it",
                graph[writer].stage, graph[writer].stage, reader.stage
            ));
            report(
                &graph[writer],
                reader,
                Issue::new(format!("stages.{}.params", reader.stage), message).with_help(help),
            );
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn spellings_of_one_path_compare_equal() {
        assert_eq!(components("./out//a.csv"), ["out", "a.csv"]);
        assert_eq!(components("/tmp/x"), ["/", "tmp", "x"]);
    }
}
