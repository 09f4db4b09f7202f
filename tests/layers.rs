//! The layout keeps its promise: imports run only downward through the
//! layers `ARCHITECTURE.md` lists, and no two modules of one layer import
//! each other in a circle. Read from the source text, so a new upward edge
//! fails here before a reviewer has to spot it.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and its rank: a module may import only from layers of a
/// lower rank (and from its own layer). Equal ranks are separate rooms
/// that must not import each other.
const LAYERS: &[(&str, u32)] = &[
    ("limits", 0),
    ("config", 1),
    ("metrics", 2),
    ("logging", 2),
    ("fleet", 3),
    ("runtime", 4),
    ("proxy", 5),
    ("services", 5),
    ("admin", 6),
    ("server", 7),
    ("main", 8),
];

fn rank(layer: &str) -> Option<u32> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/proxy/forward/mod.rs` → `proxy::forward`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and string literals (so that a doc
/// comment naming `crate::x` is not an import).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path a file refers to, as module segments: `crate::a::b::C`
/// (or `floodgate::…` in `main.rs`) and `super::…` resolved against the
/// file's own module.
fn references(file: &Path, text: &str) -> Vec<Vec<String>> {
    let me = module_of(file);
    let code = code_only(text);
    let bytes = code.as_bytes();
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        // Bytes, not `str` slicing: `i` may sit inside a multi-byte
        // character of a string literal.
        (String::from_utf8_lossy(&bytes[i..j]).into_owned(), j)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !starts_word {
            i += 1;
            continue;
        }
        let (word, end) = ident(i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        let base: Option<Vec<String>> = match word.as_str() {
            "crate" | "floodgate" => Some(Vec::new()),
            // The parent of this file's module (for `a/mod.rs`, module
            // `a`, as for `a.rs`).
            "super" => Some(me[..me.len().saturating_sub(1)].to_vec()),
            _ => None,
        };
        let Some(mut path) = base else {
            i = end;
            continue;
        };
        let mut j = end;
        while code[j..].starts_with("::") {
            let (seg, e) = ident(j + 2);
            if seg.is_empty() {
                break;
            }
            if seg == "super" {
                path.pop();
            } else {
                path.push(seg);
            }
            j = e;
        }
        if !path.is_empty() {
            out.push(path);
        }
        i = j.max(end);
    }
    out
}

/// The file a module path lands in: the longest prefix that is a file.
fn file_of(path: &[String], files: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains(p))
}

#[test]
fn imports_run_only_downward_and_never_in_circles() {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let modules: BTreeSet<Vec<String>> = paths.iter().map(|p| module_of(p)).collect();
    let mut upward = Vec::new();
    // Edges between files of one layer (mod.rs files, which only declare
    // and re-export their children, are left out).
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &paths {
        let me = module_of(file);
        let Some(layer) = me.first().cloned() else {
            continue;
        };
        if layer == "lib" {
            continue;
        }
        let my_rank =
            rank(&layer).unwrap_or_else(|| panic!("{}: not a layer in LAYERS", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        // Test modules may reach anywhere.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for r in references(file, text) {
            let target_layer = &r[0];
            let Some(target_rank) = rank(target_layer) else {
                continue;
            };
            if *target_layer != layer && target_rank >= my_rank {
                upward.push(format!("{} -> {}", me.join("::"), r.join("::")));
            }
            if *target_layer == layer {
                if let Some(target) = file_of(&r, &modules) {
                    let is_root = |m: &Vec<String>| {
                        paths
                            .iter()
                            .any(|p| module_of(p) == *m && p.ends_with("mod.rs"))
                            || m.len() == 1
                    };
                    if target != me && !is_root(&target) && !is_root(&me) {
                        edges.entry(me.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers:\n  {}",
        upward.join("\n  ")
    );
    // Cycles: depth-first search with colours.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                0 => visit(m, edges, state, stack, cycles),
                1 => {
                    let from = stack.iter().position(|x| x == m).unwrap_or(0);
                    let names: Vec<String> = stack[from..].iter().map(|x| x.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), m.join("::")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn no_source_file_grows_past_the_limit() {
    // ~500 lines a file; the exceptions say why.
    const EXCEPTIONS: &[(&str, &str)] = &[];
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let mut long = Vec::new();
    for p in &paths {
        let n = std::fs::read_to_string(p).unwrap().lines().count();
        let rel = p.strip_prefix(src()).unwrap().display().to_string();
        if n > 550 && !EXCEPTIONS.iter().any(|(f, _)| *f == rel) {
            long.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files over 550 lines:\n  {}",
        long.join("\n  ")
    );
}
