//! Where each key of a pipeline file sits, so that errors found after merging
//! (`extends`, `use`) still point at a file, line and column.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use yaml_rust2::parser::{Event, Parser};

/// A problem found in a pipeline, before it is placed in a file.
#[derive(Debug, Clone)]
pub struct Issue {
    /// Key path inside the merged pipeline, e.g. `stages.pairs.needs[0]`.
    pub path: String,
    pub message: String,
    pub help: Option<String>,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue { path: path.into(), message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// One pipeline error, placed in the file that holds the offending key.
#[derive(Debug)]
pub struct PipelineError {
    pub file: PathBuf,
    pub path: String,
    pub line_col: Option<(usize, usize)>,
    pub message: String,
    pub help: Option<String>,
    source: NamedSource<String>,
    offset: Option<usize>,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for PipelineError {}

impl Diagnostic for PipelineError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("silkie::pipeline"))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.offset.map(|_| &self.source as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let offset = self.offset?;
        let label = if self.path.is_empty() { "here".to_string() } else { self.path.clone() };
        Some(Box::new(std::iter::once(LabeledSpan::new(Some(label), offset, 1))))
    }
}

/// All the errors of one pipeline, reported together.
#[derive(Debug)]
pub struct PipelineErrors(pub Vec<PipelineError>);

impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

impl std::error::Error for PipelineErrors {}

#[derive(Debug, Clone, Copy)]
struct Position {
    offset: usize,
    line: usize,
    col: usize,
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    text: String,
    /// Prefix prepended to this file's own key paths (a `use:` file is a stage body).
    mount: String,
    positions: HashMap<String, Position>,
}

/// The files that make up one pipeline, in lookup order.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// Registers a file's text; `mount` is where its root sits in the merged pipeline.
    pub fn add(&mut self, path: &Path, text: &str, mount: &str) {
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            text: text.to_string(),
            mount: mount.to_string(),
            positions: index_positions(text),
        });
    }

    /// Places a syntax error whose file and byte offset are already known.
    pub fn error_at(path: &Path, text: &str, offset: Option<usize>, message: String) -> PipelineError {
        let line_col = offset.map(|o| line_col_of(text, o));
        PipelineError {
            file: path.to_path_buf(),
            path: String::new(),
            line_col,
            message,
            help: None,
            source: NamedSource::new(path.display().to_string(), text.to_string()),
            offset,
        }
    }

    /// Places an issue in the first file that defines its key (or its nearest parent).
    pub fn locate(&self, issue: Issue) -> PipelineError {
        let mut probe = issue.path.clone();
        loop {
            for file in &self.files {
                let Some(local) = strip_mount(&probe, &file.mount) else { continue };
                if let Some(pos) = file.positions.get(local) {
                    return PipelineError {
                        file: file.path.clone(),
                        path: issue.path,
                        line_col: Some((pos.line, pos.col)),
                        message: issue.message,
                        help: issue.help,
                        source: NamedSource::new(file.path.display().to_string(), file.text.clone()),
                        offset: Some(pos.offset),
                    };
                }
            }
            match parent_path(&probe) {
                Some(parent) => probe = parent.to_string(),
                None => break,
            }
        }
        let (file, text) = self.files.first().map(|f| (f.path.clone(), f.text.clone())).unwrap_or_default();
        PipelineError {
            file: file.clone(),
            path: issue.path,
            line_col: None,
            message: issue.message,
            help: issue.help,
            source: NamedSource::new(file.display().to_string(), text),
            offset: None,
        }
    }

    pub fn locate_all(&self, issues: Vec<Issue>) -> PipelineErrors {
        PipelineErrors(issues.into_iter().map(|i| self.locate(i)).collect())
    }
}

fn strip_mount<'a>(path: &'a str, mount: &str) -> Option<&'a str> {
    if mount.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(mount)?;
    if rest.is_empty() { Some("") } else { rest.strip_prefix('.').or_else(|| rest.starts_with('[').then_some(rest)) }
}

/// `a.b[0].c` → `a.b[0]` → `a.b` → `a` → ``.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

fn line_col_of(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before, |nl| &before[nl + 1..]).chars().count() + 1;
    (line, col)
}

enum Frame {
    Map { path: String, expecting_key: bool, pending_key: Option<String> },
    Seq { path: String, next: usize },
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// Maps every key path of a YAML text to the position of its key (or list item).
fn index_positions(text: &str) -> HashMap<String, Position> {
    let mut positions = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    // Returns the path the next node occupies, recording its position if it is a key or item.
    let next_node = |stack: &mut Vec<Frame>,
                     positions: &mut HashMap<String, Position>,
                     pos: Position,
                     scalar: Option<&str>|
     -> Option<String> {
        match stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                positions.entry(item.clone()).or_insert(pos);
                Some(item)
            }
            Some(Frame::Map { path, expecting_key, pending_key }) => {
                if *expecting_key {
                    *expecting_key = false;
                    let key = scalar.unwrap_or("?").to_string();
                    positions.entry(join(path, &key)).or_insert(pos);
                    *pending_key = Some(key);
                    None
                } else {
                    *expecting_key = true;
                    let key = pending_key.take().unwrap_or_default();
                    Some(join(path, &key))
                }
            }
        }
    };
    while let Ok((event, mark)) = parser.next_token() {
        let pos = Position { offset: char_to_byte(text, mark.index()), line: mark.line(), col: mark.col() + 1 };
        match event {
            Event::StreamEnd => break,
            Event::Scalar(value, ..) => {
                next_node(&mut stack, &mut positions, pos, Some(&value));
            }
            Event::Alias(_) => {
                next_node(&mut stack, &mut positions, pos, None);
            }
            Event::MappingStart(..) => {
                if let Some(path) = next_node(&mut stack, &mut positions, pos, None) {
                    stack.push(Frame::Map { path, expecting_key: true, pending_key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = next_node(&mut stack, &mut positions, pos, None) {
                    stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    positions
}

fn char_to_byte(text: &str, char_index: usize) -> usize {
    text.char_indices().nth(char_index).map_or(text.len(), |(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_nesting() {
        let text = "version: 1\nstages:\n  a:\n    kind: load\n    needs: [b, c]\n";
        let p = index_positions(text);
        assert_eq!((p["stages.a.kind"].line, p["stages.a.kind"].col), (4, 5));
        assert_eq!(p["stages.a.needs[1]"].line, 5);
    }

    #[test]
    fn parents_walk_up() {
        assert_eq!(parent_path("a.b[0].c"), Some("a.b[0]"));
        assert_eq!(parent_path("a.b[0]"), Some("a.b"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
