//! ARCHITECTURE.md's "What may depend on what", enforced: every library module (a file or
//! folder under `src/`, the binary's `main.rs` and `cli/` aside) may name only the modules
//! its line there allows, in `crate::…` paths outside its tests. The list is read from the
//! document itself, so the map and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SECTION: &str = "## What may depend on what";

/// module → the modules it may name, from ARCHITECTURE.md's list (`- `a` → `b`, `c` — why`).
fn allowed(document: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = document.split(SECTION).nth(1).expect("ARCHITECTURE.md has its dependency section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut map = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("- `")) {
        let (from, to) = line.split_once('→').unwrap_or_else(|| panic!("no arrow in `{line}`"));
        let to = to.split(" — ").next().unwrap_or_default();
        let targets = if to.trim() == "nothing" { BTreeSet::new() } else { quoted(to) };
        for module in quoted(from) {
            map.insert(module, targets.clone());
        }
    }
    map
}

/// The `backticked` names in `text`.
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Every library module's source files: module name → files.
fn library(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["main", "lib", "cli"].contains(&name.as_str()) {
            continue;
        }
        let files = if path.is_dir() { rust_files(&path) } else { vec![path] };
        modules.entry(name).or_insert_with(Vec::new).extend(files);
    }
    modules
}

/// A folder's Rust files, but for `tests.rs` files: a module's tests moved out of its file,
/// declared `#[cfg(test)] mod tests;` (checked), which may import what the tests need.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.file_name().is_some_and(|n| n == "tests.rs") {
            let parent = std::fs::read_to_string(dir.join("mod.rs"))
                .or_else(|_| std::fs::read_to_string(dir.with_extension("rs")))
                .unwrap_or_default();
            assert!(parent.contains("#[cfg(test)]\nmod tests;"), "{}: not declared as test code", path.display());
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules `source` names through `crate::` (in paths and `use crate::{a, b}`
/// groups), with the line of each; comments and the tests at the end of a file left out.
fn imports(source: &str) -> Vec<(usize, String)> {
    let code = source.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Each element's first name, at the group's top level.
            let mut depth = 0;
            let mut element = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((line, ident(&element)));
                        element.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || c != '{' {
                    element.push(c);
                }
            }
            found.push((line, ident(&element)));
        } else {
            found.push((line, ident(rest)));
        }
    }
    found.retain(|(_, module)| !module.is_empty());
    found
}

/// Every import of `module`'s `files` (name, source) that `allowed` does not permit, said.
fn violations(module: &str, files: &[(String, String)], allowed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let Some(may) = allowed.get(module) else {
        return vec![format!("`{module}` is not on ARCHITECTURE.md's dependency list: add its line")];
    };
    let mut out = Vec::new();
    for (name, source) in files {
        for (line, target) in imports(source) {
            if target != module && allowed.contains_key(&target) && !may.contains(&target) {
                out.push(format!(
                    "{name}:{line}: `{module}` names `{target}`, which ARCHITECTURE.md does not allow (it may name: {})",
                    if may.is_empty() { "nothing".to_string() } else { may.iter().cloned().collect::<Vec<_>>().join(", ") }
                ));
            }
        }
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_module_names_only_what_the_architecture_allows() {
    let document = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let allowed = allowed(&document);
    assert!(allowed.len() >= 10, "the dependency list did not parse: {allowed:?}");
    let mut wrong = Vec::new();
    for (module, paths) in library(&root().join("src")) {
        let files: Vec<(String, String)> = paths
            .iter()
            .map(|p| (p.strip_prefix(root()).unwrap().display().to_string(), std::fs::read_to_string(p).unwrap()))
            .collect();
        wrong.extend(violations(&module, &files, &allowed));
    }
    assert!(wrong.is_empty(), "imports the architecture does not allow:\n{}", wrong.join("\n"));
}

#[test]
fn a_forbidden_import_is_caught_wherever_it_hides() {
    let allowed = allowed(&format!(
        "{SECTION}\n\n- `data` → `table` — why.\n- `store` → nothing.\n- `table` → nothing.\n\n## Next"
    ));
    let check = |source: &str| violations("data", &[("src/data/x.rs".into(), source.into())], &allowed);
    assert!(check("use crate::table::read;\nfn f() { crate::data::g(); }").is_empty());
    for hidden in [
        "use crate::store::Store;",
        "use crate::{table, store::Store};",
        "use crate::{\n    table::read,\n    store::{Store, blobs},\n};",
        "fn f() { let _ = crate::store::now(); }",
    ] {
        let found = check(hidden);
        assert_eq!(found.len(), 1, "{hidden}: {found:?}");
        assert!(found[0].contains("`data` names `store`"), "{}", found[0]);
    }
    // Comments and the tests at a file's end may name anything.
    assert!(check("// see crate::store\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::store; }").is_empty());
}
