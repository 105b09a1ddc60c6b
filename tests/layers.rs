//! The architecture, checked: every import arrow between modules points down (no cycles, at
//! the crate's top level nor among the files of one module), and no source file outside the
//! tests is over 500 lines.
//!
//! A reading of the `use` lines and `crate::`/`super::` paths in `src/`, test code left out
//! (a `#[cfg(test)]` module may reach anything). A parent module and its own children are not
//! counted as a cycle: a child uses its parent's types, the parent declares and re-exports
//! the child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;

/// One source file: its module path under `src/` (`["queue", "redis", "conn"]`) and its code.
struct Source {
    module: Vec<String>,
    path: PathBuf,
    code: String,
    lines: usize,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).ok()?.with_extension("");
            let mut module: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            match module.last().map(String::as_str) {
                // The crate root and the binary declare modules; test files may use anything.
                Some("lib" | "main" | "tests") if module.len() == 1 || module.last().is_some_and(|m| m == "tests") => {
                    return None;
                }
                Some("mod") => {
                    module.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&path).ok()?;
            let lines = text.lines().count();
            Some(Source { module, path, code: without_tests_and_comments(&text), lines })
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code up to the file's first `#[cfg(test)]`, without comment lines.
fn without_tests_and_comments(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path in `code` that starts with `prefix` (`crate::` or `super::`), as its segments, with
/// `use a::{b, c}` groups opened up to their first segment.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        // `crate::` inside a longer path (`my_crate::`, `super::super::`) is counted once, whole.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut segments = Vec::new();
        let mut tail = rest;
        loop {
            let name: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() {
                // A `{a, b}` group: each member's first segment.
                if let Some(group) = tail.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    for member in group[..end].split(',') {
                        let first: String =
                            member.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if !first.is_empty() {
                            let mut path = segments.clone();
                            path.push(first);
                            found.push(path);
                        }
                    }
                    segments.clear();
                }
                break;
            }
            tail = &tail[name.len()..];
            segments.push(name);
            match tail.strip_prefix("::") {
                Some(next) => tail = next,
                None => break,
            }
        }
        if !segments.is_empty() {
            found.push(segments);
        }
    }
    found
}

/// Edges between the children of `parent` (the crate root when empty): which child's code names
/// which sibling.
fn sibling_edges(sources: &[Source], parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let children: BTreeSet<String> = sources
        .iter()
        .filter(|s| s.module.len() > parent.len() && s.module.starts_with(parent))
        .map(|s| s.module[parent.len()].clone())
        .collect();
    let exported = reexports(sources, parent, &children);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources.iter().filter(|s| s.module.len() > parent.len() && s.module.starts_with(parent)) {
        let from = &source.module[parent.len()];
        let mut targets = Vec::new();
        for path in paths_after(&source.code, "crate::") {
            if path.len() > parent.len() && path.starts_with(parent) {
                targets.push(path[parent.len()].clone());
            }
        }
        // `super::x` from a file directly under `parent` (or `super::super::x` one deeper) names
        // a sibling of `from`.
        let depth_below = source.module.len() - parent.len();
        let supers = "super::".repeat(depth_below);
        if depth_below >= 1 && !(depth_below == 1 && is_mod_file(source)) {
            for path in paths_after(&source.code, &supers) {
                if let Some(first) = path.first() {
                    targets.push(first.clone());
                }
            }
        }
        for target in targets {
            // A name the parent re-exports (`pub use child::Thing`) stands for its child.
            let target = exported.get(&target).cloned().unwrap_or(target);
            if &target != from && children.contains(&target) {
                edges.entry(from.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// The names `parent`'s own file re-exports from its children (`pub use child::{A, B as C}`),
/// each with the child it comes from.
fn reexports(sources: &[Source], parent: &[String], children: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let Some(own) = sources.iter().find(|s| s.module == parent && is_mod_file(s)) else { return names };
    for statement in own.code.split(';') {
        let Some(used) = statement.trim().strip_prefix("pub use ") else { continue };
        let Some((child, rest)) = used.split_once("::") else { continue };
        if !children.contains(child) {
            continue;
        }
        for item in rest.replace(['{', '}'], ",").split(',') {
            let item = item.trim();
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item.rsplit("::").next().unwrap_or(item),
            };
            if !name.is_empty() && name != "self" && name != "*" {
                names.insert(name.to_owned(), child.to_owned());
            }
        }
    }
    names
}

fn is_mod_file(source: &Source) -> bool {
    source.path.file_name().is_some_and(|f| f == "mod.rs")
}

/// A cycle in `edges`, as the modules along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let sources = sources();
    assert!(sources.len() > 20, "found only {} source files", sources.len());
    let parents: BTreeSet<Vec<String>> =
        sources.iter().flat_map(|s| (0..s.module.len()).map(|n| s.module[..n].to_vec())).collect();
    let mut cycles = Vec::new();
    for parent in &parents {
        let edges = sibling_edges(&sources, parent);
        if let Some(cycle) = find_cycle(&edges) {
            let at = if parent.is_empty() { "crate".to_owned() } else { parent.join("::") };
            cycles.push(format!("in {at}: {}", cycle.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The checker itself finds a cycle where there is one, and none where there is not.
#[test]
fn the_cycle_check_sees_cycles() {
    let source = |module: &[&str], code: &str| Source {
        module: module.iter().map(|m| m.to_string()).collect(),
        path: PathBuf::from(format!("{}.rs", module.join("/"))),
        code: code.to_owned(),
        lines: 1,
    };
    let cyclic = [
        source(&["a"], "use crate::b::Thing;"),
        source(&["b"], "use crate::{c, d::X};"),
        source(&["c"], "fn f() { crate::a::g() }"),
        source(&["d", "x"], "use super::super::a;"),
    ];
    let edges = sibling_edges(&cyclic, &[]);
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let layered = [source(&["a"], "use crate::b::Thing;"), source(&["b"], "use crate::c;"), source(&["c"], "")];
    assert_eq!(find_cycle(&sibling_edges(&layered, &[])), None);
    let siblings = [source(&["q", "x"], "use super::y::Y;"), source(&["q", "y"], "use super::x;")];
    assert!(find_cycle(&sibling_edges(&siblings, &["q".to_owned()])).is_some());
    // Through the names the parent re-exports: `super::Y` is `y`'s, `crate::q::X` is `x`'s.
    let mut parent = source(&["q"], "pub use x::{X, Other as Renamed};\npub use y::Y;");
    parent.path = PathBuf::from("q/mod.rs");
    let through_reexports =
        [parent, source(&["q", "x"], "use super::Y;"), source(&["q", "y"], "fn f(_: crate::q::Renamed) {}")];
    let edges = sibling_edges(&through_reexports, &["q".to_owned()]);
    assert_eq!(find_cycle(&edges), Some(vec!["x".into(), "y".into(), "x".into()]));
}

#[test]
fn no_source_file_is_over_500_lines() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.lines > MAX_LINES)
        .map(|s| format!("{} ({} lines)", s.path.display(), s.lines))
        .collect();
    assert!(long.is_empty(), "split these (tests may go in a tests.rs beside them): {long:?}");
}
