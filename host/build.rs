//! Build facts for `gatehouse_build_info`: the commit (when built from a git
//! checkout) and the wasmtime release in `Cargo.lock`.

use std::process::Command;

fn main() {
    // Read when the script runs, not baked in when it compiles: a target
    // directory shared by two checkouts reuses one compiled script.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&manifest_dir).join("..");
    let sha = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GATEHOUSE_GIT_SHA={sha}");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GATEHOUSE_WASMTIME_VERSION={wasmtime}");
    for path in [".git/HEAD", ".git/refs/heads", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
