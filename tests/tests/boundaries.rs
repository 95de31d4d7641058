//! The architecture's boundary rules (ARCHITECTURE.md, "Boundaries"), checked by reading the
//! `crate::` paths of every source file: a rule broken by a new `use` fails here, not in review.
//!
//! A module's edges are the top-level modules its files name through `crate::` (outside
//! comments); `super::` stays inside a folder by construction. Nothing here builds or runs the
//! code, so the check is fast and sees test modules too (a test may not reach across a
//! boundary either).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The text of a source file (a source file over a megabyte would be a finding of its own).
fn read(path: &Path) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    fs::File::open(path)
        .expect("source is readable")
        .take(1 << 20)
        .read_to_string(&mut text)
        .expect("source is UTF-8");
    text
}

/// Every `.rs` file under `dir`, with its path relative to `dir`.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(&folder).expect("source folder is readable") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = read(&path);
                out.push((relative, text));
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments (line comments and doc comments; the sources use
/// no block comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) would cut the line short; that can only
            // hide a path, and paths in strings are not imports.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names through `crate::`, each as its segments (`["events", "emit"]`
/// for `crate::events::emit::{Emitter, Writer}`).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = code(text);
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `$crate::` (in macros) and `tollgate_crate::` are not this crate's module paths.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let mut path = Vec::new();
        let mut cursor = rest;
        loop {
            let segment: String = cursor
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if segment.is_empty() {
                break;
            }
            cursor = &cursor[segment.len()..];
            path.push(segment);
            match cursor.strip_prefix("::") {
                Some(after) => cursor = after,
                None => break,
            }
        }
        out.push(path);
    }
    out
}

/// A file's top-level module: `proxy/meter.rs` is `proxy`, `state.rs` is `state`.
fn module_of(relative: &str) -> String {
    let first = relative.split('/').next().unwrap_or(relative);
    first.trim_end_matches(".rs").to_owned()
}

/// The edges between top-level modules of the crate whose sources are in `src`: for each
/// module, the modules it names and the first file that names each.
fn edges(src: &Path, skip: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (relative, text) in sources(src) {
        if skip.iter().any(|s| relative.starts_with(s)) {
            continue;
        }
        let from = module_of(&relative);
        let named = out.entry(from.clone()).or_default();
        for path in crate_paths(&text) {
            let Some(to) = path.first() else { continue };
            if *to != from {
                named.entry(to.clone()).or_insert_with(|| relative.clone());
            }
        }
    }
    out
}

/// A cycle among the modules, if there is one, as the modules on it.
fn cycle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(found) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

fn assert_acyclic(crate_dir: &str, skip: &[&str]) {
    let edges = edges(&root().join(crate_dir).join("src"), skip);
    if let Some(found) = cycle(&edges) {
        let files: Vec<String> = found
            .windows(2)
            .map(|pair| format!("{} -> {} ({})", pair[0], pair[1], edges[&pair[0]][&pair[1]]))
            .collect();
        panic!(
            "{crate_dir}: modules import each other in a circle:\n  {}",
            files.join("\n  ")
        );
    }
}

#[test]
fn no_two_modules_of_a_crate_import_each_other_even_through_others() {
    assert_acyclic("engine", &[]);
    assert_acyclic("sink", &[]);
    assert_acyclic("gateway", &["bin/"]);
}

#[test]
fn the_request_path_never_reaches_the_control_plane() {
    let edges = edges(&root().join("gateway/src"), &["bin/"]);
    let forbidden = ["control", "usage", "runtime"];
    for module in [
        "http",
        "proxy",
        "providers",
        "state",
        "events",
        "metrics",
        "config",
    ] {
        for to in forbidden {
            if let Some(file) = edges.get(module).and_then(|named| named.get(to)) {
                panic!("gateway/src/{file} ({module}) imports {to}");
            }
        }
    }
    // Restore and the journal run at start, never per request.
    for (relative, text) in sources(&root().join("gateway/src")) {
        let module = module_of(&relative);
        if !["http", "proxy", "providers", "state"].contains(&module.as_str()) {
            continue;
        }
        for path in crate_paths(&text) {
            let joined = path.join("::");
            assert!(
                !joined.starts_with("events::restore") && !joined.starts_with("control::journal"),
                "gateway/src/{relative} names crate::{joined}"
            );
        }
    }
}

#[test]
fn nothing_but_the_binary_names_the_runtime_and_http_names_nothing() {
    let edges = edges(&root().join("gateway/src"), &["bin/"]);
    for (module, named) in &edges {
        if let Some(file) = named.get("runtime") {
            panic!("gateway/src/{file} ({module}) imports runtime; only the binary may");
        }
    }
    let http: Vec<&String> = edges
        .get("http")
        .into_iter()
        .flat_map(BTreeMap::keys)
        .collect();
    assert!(
        http.is_empty(),
        "http/ imports {http:?}; it is the bottom layer"
    );
}

#[test]
fn a_provider_folder_never_imports_another_providers_folder() {
    let src = root().join("gateway/src/providers");
    let folders: Vec<String> = fs::read_dir(&src)
        .expect("providers/ is readable")
        .filter_map(|e| {
            let path = e.ok()?.path();
            if !path.is_dir() {
                return None;
            }
            Some(path.file_name()?.to_string_lossy().into_owned())
        })
        .collect();
    // The checker must see the provider folders at all, or it proves nothing.
    assert!(
        ["anthropic", "bedrock", "gemini", "openai"]
            .iter()
            .all(|f| folders.iter().any(|seen| seen == f)),
        "providers/ has its folders: {folders:?}"
    );
    for (relative, text) in sources(&src) {
        let Some(own) = relative.split_once('/').map(|(folder, _)| folder) else {
            continue;
        };
        for path in crate_paths(&text) {
            if path.first().map(String::as_str) == Some("providers")
                && let Some(other) = path.get(1)
            {
                assert!(
                    other == own || !folders.contains(other),
                    "providers/{relative} imports providers::{other}"
                );
            }
        }
        let code = code(&text);
        for other in folders.iter().filter(|f| *f != own) {
            assert!(
                !code.contains(&format!("super::super::{other}")),
                "providers/{relative} reaches into providers/{other}"
            );
        }
    }
}

#[test]
fn the_provider_kind_is_matched_only_where_adapters_are_made_and_configs_checked() {
    for (relative, text) in sources(&root().join("gateway/src")) {
        if code(&text).contains("ProviderKind::") {
            assert!(
                relative == "providers/mod.rs"
                    || relative.starts_with("config/")
                    || relative == "providers/config.rs",
                "gateway/src/{relative} names a ProviderKind variant; generic code never \
                 names a provider"
            );
        }
    }
}

#[test]
fn the_library_does_not_link_the_load_harness() {
    for (relative, text) in sources(&root().join("gateway/src")) {
        if relative.starts_with("bin/") {
            continue;
        }
        assert!(
            !code(&text).contains("tollgate_loadtest"),
            "gateway/src/{relative} uses the load harness; only the binary's demo may"
        );
    }
    let manifest = read(&root().join("gateway/Cargo.toml"));
    let line = manifest
        .lines()
        .find(|l| l.starts_with("tollgate-loadtest"))
        .expect("the demo's dependency is declared");
    assert!(
        line.contains("optional = true"),
        "the load harness is an optional dependency behind the `demo` feature: {line}"
    );
}

#[test]
fn the_checker_sees_paths_and_cycles() {
    let text = "use crate::events::emit::{Emitter, Writer};\n// crate::control is a comment\n\
                fn f() { crate::clock::now_ms(); }";
    let strings = |path: &[&str]| path.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        crate_paths(text),
        vec![strings(&["events", "emit"]), strings(&["clock", "now_ms"])]
    );
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    edges
        .entry("a".into())
        .or_default()
        .insert("b".into(), "a.rs".into());
    edges
        .entry("b".into())
        .or_default()
        .insert("c".into(), "b.rs".into());
    assert_eq!(cycle(&edges), None);
    edges
        .entry("c".into())
        .or_default()
        .insert("a".into(), "c.rs".into());
    assert_eq!(
        cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
