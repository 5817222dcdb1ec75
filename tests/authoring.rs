//! The plugin authoring paths a newcomer follows: with `cargo component`,
//! copy the `hello` template, change it, `cargo component build`, drop the
//! `.wasm` into `plugins/`, and the gateway serves it; and `gatehouse plugin
//! new` (Rust, Python) outside this repository, built with the one command
//! its README gives, loaded as it is.

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

/// Serves `wasm` as plugin `name` on `/greet` with `greeting = "howdy"` and
/// checks one request with a verified caller.
fn serve_and_greet(name: &str, wasm: std::path::PathBuf) {
    let demo = Demo::start();
    let route = format!(
        "service = \"user-service\"\nupstream = \"http://127.0.0.1:{{user-service}}\"\n\n[[route]]\nprefix = \"/greet\"\nauth = \"required\"\nplugin = \"{name}\"\n\n[route.settings]\ngreeting = \"howdy\"\n"
    );
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![(format!("{name}.wasm"), wasm)],
            routes: vec![("greet.toml".into(), route)],
            shipped_routes: false,
            // A Python component is ~18 MB: generous, as for any slow machine.
            plugin_limits: "deadline = \"10s\"\n".into(),
            ..Setup::default()
        },
    );
    let resp = gw.get_as("/greet?x=1", &token("42", Some("pro")));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["message"], "howdy, 42", "{doc}");
    assert_eq!(doc["user_id"], "42", "{doc}");
    assert_eq!(doc["tier"], "pro", "{doc}");
    assert_eq!(doc["path"], "/greet?x=1", "{doc}");
    assert_eq!(doc["request_id"].as_str(), resp.header("x-request-id"), "{doc}");
}

/// `gatehouse plugin new NAME --lang LANG` into a fresh folder (no checkout
/// near it); returns the project folder and its README's build command
/// (the first `sh` block).
fn starter(name: &str, lang: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    starter_of(name, lang, "gatehouse")
}

/// `starter`, for `--world WORLD`.
fn starter_of(name: &str, lang: &str, world: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join(name);
    let out = gatehouse_cmd()
        .args(["plugin", "new", name, "--lang", lang, "--world", world, "--dir"])
        .arg(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let build = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a build command in the README")
        .trim()
        .to_string();
    (work, project, build)
}

fn run_in(dir: &Path, command: &str) {
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run the build command");
    assert!(
        out.status.success(),
        "{command} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rust_starter_builds_with_its_readme_command_and_is_served() {
    let (_work, project, build) = starter("my-greeter", "rust");
    assert_eq!(build, "cargo build --release --target wasm32-wasip2");
    // The contract and the template travel with the project.
    assert!(project.join("wit/route-handler.wit").is_file());
    run_in(&project, &build);
    // Hyphens become underscores in the file cargo writes; the README says
    // to copy it under the plugin's name.
    let wasm = project.join("target/wasm32-wasip2/release/my_greeter.wasm");
    assert!(wasm.is_file(), "{} missing", wasm.display());
    serve_and_greet("my-greeter", wasm);
}

/// componentize-py, installed from PyPI (the pinned version) when missing.
fn ensure_componentize_py(version: &str) {
    let installed = Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
    if !installed {
        eprintln!("installing componentize-py {version} (pip)");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("componentize-py=={version}"))
            .status()
            .expect("run pip");
        assert!(status.success(), "pip install componentize-py=={version} failed");
    }
}

#[test]
fn the_python_starter_builds_with_its_readme_command_and_is_served() {
    ensure_componentize_py(gatehouse::starter::COMPONENTIZE_PY);
    let (_work, project, build) = starter("py-greeter", "python");
    assert_eq!(build, "componentize-py -d wit -w route-handler componentize app -o py-greeter.wasm");
    run_in(&project, &build);
    let wasm = project.join("py-greeter.wasm");
    serve_and_greet("py-greeter", wasm.clone());
    serve_and_look_up("py-greeter", wasm);
}

#[test]
fn the_js_starter_builds_with_its_readme_command_and_is_served() {
    ensure_debian_package("npm", "npm", "the JavaScript starters");
    let (_work, project, build) = starter("js-greeter", "js");
    assert_eq!(build, "npm install && npm run build");
    let package = std::fs::read_to_string(project.join("package.json")).unwrap();
    assert!(
        package.contains(&format!(
            "\"@bytecodealliance/componentize-js\": \"{}\"",
            gatehouse::starter::COMPONENTIZE_JS
        )),
        "{package}"
    );
    run_in(&project, &build);
    let wasm = project.join("js-greeter.wasm");
    serve_and_greet("js-greeter", wasm.clone());
    serve_and_look_up("js-greeter", wasm);
}

/// Serves `wasm` (a starter that GETs its `lookup` setting) on a route of
/// user-service: the route's own service is reached with the verified
/// identity; a service the route does not list is refused inside the gateway.
fn serve_and_look_up(name: &str, wasm: std::path::PathBuf) {
    let demo = Demo::start();
    let routes = format!(
        "service = \"user-service\"\nupstream = \"http://127.0.0.1:{{user-service}}\"\n\n\
         [[route]]\nprefix = \"/own\"\nauth = \"required\"\nplugin = \"{name}\"\n\n[route.settings]\nlookup = \"http://user-service/api/v1/users/me\"\n\n\
         [[route]]\nprefix = \"/other\"\nauth = \"required\"\nplugin = \"{name}\"\n\n[route.settings]\nlookup = \"http://payment-service/api/v1/payments\"\n"
    );
    let payments = "service = \"payment-service\"\nupstream = \"http://127.0.0.1:{payment-service}\"\n\n[[route]]\nprefix = \"/p\"\nauth = \"required\"\n";
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![(format!("{name}.wasm"), wasm)],
            routes: vec![("own.toml".into(), routes), ("payments.toml".into(), payments.into())],
            shipped_routes: false,
            plugin_limits: "deadline = \"10s\"\n".into(),
            ..Setup::default()
        },
    );
    let tok = token("42", Some("pro"));
    let resp = gw.get("/own", &[("Authorization", &format!("Bearer {tok}")), ("X-User-ID", "7")]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let lookup = &resp.json()["lookup"];
    assert_eq!(lookup["status"], 200, "{lookup}");
    let seen: serde_json::Value = serde_json::from_str(lookup["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["service"], "user-service", "{seen}");
    assert_eq!(seen["path"], "/api/v1/users/me", "{seen}");
    assert_eq!(seen["headers"]["x-user-id"], serde_json::json!(["42"]), "{seen}");
    assert_eq!(seen["headers"]["x-user-tier"], serde_json::json!(["pro"]), "{seen}");

    let resp = gw.get_as("/other", &tok);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let lookup = &resp.json()["lookup"];
    let error = lookup["error"]
        .as_str()
        .unwrap_or_else(|| panic!("payment-service must be refused: {lookup}"));
    assert!(!error.is_empty(), "{lookup}");
    // The refusal is logged by the gateway, with the request and the URL.
    let id = resp.header("x-request-id").unwrap().to_string();
    let logged = gw.log_for(&id);
    assert!(
        logged.iter().any(|l| l["plugin"] == name
            && l["destination"].as_str().is_some_and(|u| u.contains("payment-service"))
            && l.to_string().contains("outgoing request denied")),
        "{logged:?}"
    );
}

#[test]
fn the_rust_wasi_http_starter_builds_with_its_readme_command_and_is_served() {
    let (_work, project, build) = starter_of("rs-http", "rust", "wasi-http");
    assert_eq!(build, "cargo build --release --target wasm32-wasip2");
    run_in(&project, &build);
    let wasm = project.join("target/wasm32-wasip2/release/rs_http.wasm");
    serve_and_greet("rs-http", wasm.clone());
    serve_and_look_up("rs-http", wasm);
}

#[test]
fn the_python_wasi_http_starter_builds_with_its_readme_command_and_is_served() {
    ensure_componentize_py(gatehouse::starter::COMPONENTIZE_PY);
    let (_work, project, build) = starter_of("py-http", "python", "wasi-http");
    assert_eq!(build, "componentize-py -d wit -w handler componentize app -o py-http.wasm");
    run_in(&project, &build);
    let wasm = project.join("py-http.wasm");
    serve_and_greet("py-http", wasm.clone());
    serve_and_look_up("py-http", wasm);
}

#[test]
fn the_js_wasi_http_starter_builds_with_its_readme_command_and_is_served() {
    ensure_debian_package("npm", "npm", "the JavaScript starters");
    let (_work, project, build) = starter_of("js-http", "js", "wasi-http");
    assert_eq!(build, "npm install && npm run build");
    run_in(&project, &build);
    let wasm = project.join("js-http.wasm");
    serve_and_greet("js-http", wasm.clone());
    serve_and_look_up("js-http", wasm);
}
