//! The shape of `src/`, checked: no module imports one that imports it
//! back (at the level of the crate's top modules), and no hand-written
//! file grows past ~400 lines.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The crate's top module a file belongs to (`grpc` for src/grpc/serve.rs).
fn top_module(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Where each crate-root macro is defined.
const MACROS: &[(&str, &str)] = &[
    ("section", "settings"),
    ("setting_enum", "settings"),
    ("grpc_service", "grpc"),
    ("services", "registry"),
];

/// Top modules a file refers to with `crate::<module>` (code, not
/// comments; a macro's own `$crate::` paths belong to where it expands).
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            let after = &rest[at + "crate::".len()..];
            rest = after;
            if before.ends_with('$') || before.ends_with("\"") {
                continue;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_macro = after[name.len()..].starts_with('!');
            let module = if is_macro {
                MACROS
                    .iter()
                    .find(|(m, _)| *m == name)
                    .map(|(_, module)| module.to_string())
            } else {
                Some(name)
            };
            found.extend(module);
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source");
        let refs = references(&text);
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(refs.into_iter().filter(|r| *r != module && r != "proto"));
    }
    // Depth-first search for a path back to each module.
    for start in graph.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().expect("non-empty").clone();
            for next in graph.get(&last).into_iter().flatten() {
                assert!(
                    next != start,
                    "import cycle: {} -> {start}",
                    path.join(" -> ")
                );
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    assert!(graph.contains_key("grpc") && graph["services"].contains("grpc"));
}

#[test]
fn no_hand_written_file_is_over_about_400_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let lines = std::fs::read_to_string(&file)
            .expect("source")
            .lines()
            .count();
        assert!(lines <= 420, "{} has {lines} lines", file.display());
    }
}

#[test]
fn the_reference_parser_sees_imports_and_macros() {
    let refs = references(
        "use crate::store::Backend;\n// crate::config\ncrate::section! {}\n$crate::grpc::x",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["settings".to_owned(), "store".to_owned()]
    );
}
