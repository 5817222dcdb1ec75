//! The plugin authoring path a newcomer follows with `cargo component`:
//! copy the `hello` template, change it, `cargo component build`, drop the
//! `.wasm` into `plugins/`, and the gateway serves it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `cargo component`, installed (`--locked`) when missing.
fn ensure_cargo_component() {
    let present = Command::new("cargo")
        .args(["component", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("installing cargo-component (cargo install cargo-component --locked; several minutes, once)");
        let status = Command::new("cargo")
            .args(["install", "cargo-component", "--locked"])
            .status()
            .expect("run cargo install");
        assert!(status.success(), "cargo install cargo-component failed");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_plugin_built_with_cargo_component_is_served() {
    ensure_cargo_component();
    // The layout of this repository: wit/ and plugins/<name>/ side by side.
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("wit"), &work.path().join("wit"));
    let krate = work.path().join("plugins/greeter");
    copy_dir(&repo().join("plugins/hello/src"), &krate.join("src"));
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\nwit-bindgen = \"0.61\"\n\n[package.metadata.component]\npackage = \"example:greeter\"\n",
    )
    .unwrap();
    // The newcomer's change: a different default greeting.
    let lib = krate.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("\"hello\".to_string()"), "the template changed: update this test");
    std::fs::write(&lib, source.replace("\"hello\".to_string()", "\"howdy\".to_string()")).unwrap();

    // A target folder kept between runs, so only the first run compiles deps.
    let target = repo().join("target/cargo-component-test");
    let out = Command::new("cargo")
        .args(["component", "build", "--release"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo component build");
    assert!(
        out.status.success(),
        "cargo component build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip1/release/greeter.wasm");
    assert!(wasm.is_file(), "{} missing", wasm.display());

    let demo = Demo::start();
    let route = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/greet\"\nauth = \"required\"\nplugin = \"greeter\"\n";
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![("greeter.wasm".into(), wasm)],
            routes: vec![("greet.toml".into(), route.into())],
            shipped_routes: false,
            ..Setup::default()
        },
    );
    let resp = gw.get_as("/greet", &token("42", Some("pro")));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["message"], "howdy, 42", "{doc}");
    assert_eq!(doc["tier"], "pro", "{doc}");
}
