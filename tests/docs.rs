//! The README and docs/ against the repository: every link, every path in
//! backticks, every entry of the README's Layout block and every
//! `make <target>` they name must exist. (The configuration reference is
//! checked against the config types by `config::reference`.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::repo;

/// README.md and every Markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    docs
}

/// Top-level folders and files a backticked word may start with to be
/// read as a repository path.
const ROOTS: &[&str] = &[
    "host/", "tests/", "bench/", "scripts/", "plugins/", "docs/", "wit/", "routes/", "fuzz/", ".cargo/", ".ci/",
];

/// Backticked words that name a file or folder of the repository (build
/// outputs, globs and placeholders left out).
fn paths_in(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| ROOTS.iter().any(|r| w.starts_with(r)) || ["Makefile", "gatehouse.toml", "Cargo.toml"].contains(w))
        .filter(|w| !w.contains(['<', '*', '{', ' ', '…']) && !w.ends_with(".wasm"))
        .map(|w| w.trim_end_matches([':', ',', '.']).to_string())
        .collect()
}

/// Markdown link targets that are files (not web addresses or anchors).
fn links_in(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.starts_with("http") && !t.starts_with('#'))
        .map(|t| t.split('#').next().unwrap().to_string())
        .collect()
}

#[test]
fn every_link_and_path_in_the_docs_exists() {
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let shown = doc.strip_prefix(repo()).unwrap().display().to_string();
        for link in links_in(&text) {
            if !doc.parent().unwrap().join(&link).exists() {
                missing.push(format!("{shown}: link {link}"));
            }
        }
        for path in paths_in(&text) {
            if !repo().join(&path).exists() {
                missing.push(format!("{shown}: path {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_readme_layout_names_what_is_there() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("## Layout")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("a Layout code block");
    let mut parent = PathBuf::new();
    let mut missing = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let indented = line.starts_with(' ');
        let Some(name) = line.split_whitespace().next() else { continue };
        // Continuation lines of a description start with lower-case prose.
        if indented && !name.contains(['/', '.']) {
            continue;
        }
        let path = if indented { parent.join(name) } else { PathBuf::from(name) };
        if !indented {
            parent = path.clone();
        }
        if !repo().join(&path).exists() {
            missing.push(path.display().to_string());
        }
    }
    assert!(missing.is_empty(), "README Layout names what is not there: {missing:?}");
}

#[test]
fn every_make_target_the_docs_name_exists() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let targets: BTreeSet<&str> = makefile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| !t.is_empty() && !t.starts_with(['.', '\t', '#', ' ']))
        .collect();
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        // As a command: in backticks, or at the start of a line of a code block.
        for (i, _) in text.match_indices("make ") {
            let command = text[..i].ends_with('`') || text[..i].ends_with('\n');
            let target: String = text[i + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if command && !target.is_empty() && !targets.contains(target.as_str()) {
                missing.push(format!("{}: make {target}", Path::new(&doc).display()));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_gatehouse_command_the_docs_name_exists() {
    let mut named = BTreeSet::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        // As a command: at the start of a line (a code block) or in backticks.
        for (i, _) in text.match_indices("gatehouse ") {
            if !(text[..i].ends_with('`') || text[..i].ends_with('\n') || text[..i].ends_with("release/")) {
                continue;
            }
            let word: String = text[i + 10..].chars().take_while(|c| c.is_ascii_lowercase()).collect();
            if !word.is_empty() {
                named.insert(word);
            }
        }
    }
    assert!(named.contains("serve") && named.contains("check"), "{named:?}");
    for command in named {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args([command.as_str(), "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the docs name `gatehouse {command}`, which is not a command");
    }
}
