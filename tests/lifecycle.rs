//! `src/proxy/LIFECYCLE.md` names the functions a request passes through (`module::name`,
//! `module::Type::method`); every one must still exist where it says, so the document cannot
//! drift from the code unnoticed.

// Helpers outside the #[test] function unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Where `module` lives: a file of `src/proxy/` or of one of its directories (`gates` is
/// `src/proxy/pipeline/gates.rs`), of `src/`, or the certs-cache crate.
fn files_of(root: &Path, module: &str) -> Vec<PathBuf> {
    let mut candidates = vec![
        root.join(format!("src/proxy/{module}.rs")),
        root.join(format!("src/{module}.rs")),
    ];
    for entry in std::fs::read_dir(root.join("src/proxy")).unwrap() {
        candidates.push(entry.unwrap().path().join(format!("{module}.rs")));
    }
    let mut found: Vec<PathBuf> = candidates.into_iter().filter(|p| p.exists()).collect();
    if module == "certs_cache" {
        found.extend(
            std::fs::read_dir(root.join("certs-cache/src"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
    }
    found
}

/// Whether `text` defines `name` (a function, type, constant or module) or, for a capitalised
/// name, has it as an enum variant.
fn defines(text: &str, name: &str) -> bool {
    let items = [
        "fn", "struct", "enum", "trait", "const", "static", "type", "mod",
    ];
    let defined = items.iter().any(|item| {
        text.match_indices(&format!("{item} {name}"))
            .any(|(at, m)| {
                let next = text[at + m.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
    });
    let variant = name.starts_with(char::is_uppercase)
        && text.lines().any(|l| {
            let l = l.trim();
            l.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([',', '(', ' ', '{']))
        });
    defined || variant
}

#[test]
fn every_name_lifecycle_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("src/proxy/LIFECYCLE.md")).unwrap();
    let all: Vec<(PathBuf, String)> = ["src", "certs-cache/src"]
        .iter()
        .flat_map(|d| walk(&root.join(d)))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    let mut checked = 0;
    let mut missing = Vec::new();
    for word in doc.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        let parts: Vec<&str> = word.split("::").filter(|p| !p.is_empty()).collect();
        if parts.len() < 2 || !word.contains("::") {
            continue;
        }
        checked += 1;
        let (first, rest) = (parts[0], &parts[1..]);
        let files = files_of(root, first);
        let texts: Vec<&str> = if files.is_empty() {
            // A type first (`ErrorKind::retry_on_fresh_connection`): the file defining it.
            all.iter()
                .filter(|(_, t)| defines(t, first))
                .map(|(_, t)| t.as_str())
                .collect()
        } else {
            all.iter()
                .filter(|(p, _)| files.contains(p))
                .map(|(_, t)| t.as_str())
                .collect()
        };
        if !texts
            .iter()
            .any(|t| rest.iter().all(|name| defines(t, name)))
        {
            missing.push(word.to_owned());
        }
    }
    assert!(
        checked >= 30,
        "only {checked} names found: is the document still there?"
    );
    assert!(
        missing.is_empty(),
        "LIFECYCLE.md cites names the code no longer has: {missing:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
