//! Every input the fuzzers kept (`fuzz/regressions/<target>/`: crashes
//! found and fixed, and hand-written seeds), replayed on stable.

use std::path::Path;

fn replay(target: &str, oracle: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| oracle(&input));
        assert!(outcome.is_ok(), "{} fails again", path.display());
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}

#[test]
fn upstream_response_regressions() {
    replay("upstream_response", super::upstream_response);
}

#[test]
fn path_normalize_regressions() {
    replay("path_normalize", super::path_normalize);
}

#[test]
fn header_strip_regressions() {
    replay("header_strip", super::header_strip);
}

#[test]
fn token_regressions() {
    replay("token", super::token);
}
