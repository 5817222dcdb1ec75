//! `docs/configuration.md` against the configuration types: every key the
//! types accept is documented, and every documented key is accepted. The
//! accepted keys are read off serde's own refusal of an unknown key
//! ("expected one of ..."), so the check follows the types as they change.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Config, load_routes};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked words of `text`.
fn ticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The keys a table accepts, from the error an unknown key gets
/// ("expected one of `a`, `b`", "expected `a` or `b`", "expected `a`").
fn accepted(error: &str) -> BTreeSet<String> {
    let (_, expected) = error.split_once("`zz_unknown`, expected").unwrap_or_else(|| panic!("{error}"));
    ticked(expected).into_iter().map(String::from).collect()
}

fn gateway_table_keys(table: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let header = if table == "auth.keys" {
        "[[auth.keys]]".to_string()
    } else {
        format!("[{table}]")
    };
    std::fs::write(&file, format!("{header}\nzz_unknown = 1\n")).unwrap();
    accepted(&Config::load(Some(&file)).unwrap_err().to_string())
}

/// (table, key) pairs named in the first column of the `gatehouse.toml`
/// table: `server.listen`, `server.routes_dir` / `plugins_dir`,
/// `[[auth.keys]]` `kid`, `alg`.
fn documented_gateway_keys(doc: &str) -> BTreeSet<(String, String)> {
    let section = doc.split("## `gatehouse.toml`").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut keys = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        let words = ticked(first);
        let (table, rest) = match words[0].strip_prefix('[') {
            Some(t) => (t.trim_matches(['[', ']']).to_string(), &words[1..]),
            None => {
                let (table, key) = words[0].rsplit_once('.').unwrap();
                keys.insert((table.to_string(), key.to_string()));
                (table.to_string(), &words[1..])
            }
        };
        for word in rest {
            let (table, key) = word.rsplit_once('.').unwrap_or((&table, word));
            keys.insert((table.to_string(), key.to_string()));
        }
    }
    keys
}

#[test]
fn every_gatehouse_toml_key_is_documented_and_every_documented_key_exists() {
    let documented = documented_gateway_keys(&doc());
    let tables: BTreeSet<&str> = [
        "server",
        "upstream",
        "auth",
        "auth.keys",
        "auth.jwks",
        "plugins",
        "reload",
        "websocket",
    ]
    .into();
    let mut accepted = BTreeSet::new();
    for table in &tables {
        for key in gateway_table_keys(table) {
            // Sub-tables are documented by their own keys.
            if !tables.contains(format!("{table}.{key}").as_str()) {
                accepted.insert((table.to_string(), key));
            }
        }
    }
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(missing.is_empty(), "keys missing from docs/configuration.md: {missing:?}");
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names keys the config does not have: {unknown:?}"
    );
}

#[test]
fn the_route_file_example_names_every_route_key() {
    let doc = doc();
    let example = doc
        .split("## Route files")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap();
    // Keys before any table, keys of [[route]]; a plugin's [route.settings]
    // are its own.
    let (mut top, mut route) = (BTreeSet::new(), BTreeSet::new());
    let mut table = Some(&mut top);
    for line in example.lines() {
        let line = line.trim_start_matches('#').trim();
        if line.starts_with("[[route]]") {
            table = Some(&mut route);
        } else if line.starts_with('[') {
            table = None;
        } else if let (Some(keys), Some((key, _))) = (table.as_deref_mut(), line.split_once(" = "))
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(key.to_string());
        }
    }
    let refusal = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.toml"), text).unwrap();
        accepted(&load_routes(dir.path(), 1024).unwrap_err().to_string())
    };
    let top_keys = refusal("zz_unknown = 1\n");
    let route_keys = refusal("service = \"s\"\nupstream = \"http://127.0.0.1:1\"\n\n[[route]]\nzz_unknown = 1\n");
    // `route` is the array the example shows as [[route]].
    assert_eq!(top, top_keys.into_iter().filter(|k| k != "route").collect::<BTreeSet<_>>());
    assert_eq!(route, route_keys.into_iter().filter(|k| k != "settings").collect::<BTreeSet<_>>());
}
