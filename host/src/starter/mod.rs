//! `gatehouse plugin new`: a standalone plugin project that builds with one
//! command and loads as it is. Everything it needs from this repository
//! (the contract's WIT, the template) is compiled into the binary, so it
//! works from an installed `gatehouse` with no checkout at hand.

use std::path::{Path, PathBuf};

use crate::wasm::bindings::CONTRACT_VERSION;

/// The contract, as the gateway that wrote the project serves it.
const WIT: &str = include_str!("../../../wit/route-handler.wit");
/// The Rust template: the bundled `hello` plugin, which the test suite
/// builds and serves, with its WIT path made the project's own.
const RUST_TEMPLATE: &str = include_str!("../../../plugins/hello/src/lib.rs");
/// The Python template (componentize-py).
const PYTHON_TEMPLATE: &str = include_str!("app.py");
/// The JavaScript template (componentize-js).
const JS_TEMPLATE: &str = include_str!("app.js");
/// The wasi:http templates: Rust with the `wasip2` crate, Python and
/// JavaScript against the WIT below.
const RUST_HTTP_TEMPLATE: &str = include_str!("lib_http.rs");
const PYTHON_HTTP_TEMPLATE: &str = include_str!("app_http.py");
const JS_HTTP_TEMPLATE: &str = include_str!("app_http.js");
/// `wasi:http/proxy` as the gateway serves it (wasi 0.2.12, from
/// wasmtime-wasi-http), for the toolchains that need the WIT.
const WASI_HTTP_WIT: [(&str, &str); 8] = [
    ("world.wit", include_str!("wasi-http/world.wit")),
    ("deps/cli.wit", include_str!("wasi-http/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("wasi-http/deps/clocks.wit")),
    ("deps/filesystem.wit", include_str!("wasi-http/deps/filesystem.wit")),
    ("deps/http.wit", include_str!("wasi-http/deps/http.wit")),
    ("deps/io.wit", include_str!("wasi-http/deps/io.wit")),
    ("deps/random.wit", include_str!("wasi-http/deps/random.wit")),
    ("deps/sockets.wit", include_str!("wasi-http/deps/sockets.wit")),
];
/// The wasi release componentize-js 0.23.0's engine exports `fetch` events as.
const STARLINGMONKEY_WASI: &str = "0.2.10";
/// The `wasip2` crate release the Rust wasi:http starter pins (wasi 0.2.12).
const WASIP2: &str = "2.0.1";
/// The wit-bindgen release the bundled plugins build with.
const WIT_BINDGEN: &str = "0.61";
/// The componentize-py release the test suite builds the Python starter with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript starter pins.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The world a starter targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// `gatehouse:plugin/route-handler`.
    Gatehouse,
    /// `wasi:http/proxy` 0.2.
    WasiHttp,
}

/// The languages a starter can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Checks `name`: it becomes the `.wasm` file's stem (what a route's
/// `plugin =` names) and, for Rust, the crate's name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter (it names the .wasm file and the route's `plugin`)"
        ))
    }
}

/// Writes the project for plugin `name` into `dir` (which must not exist or
/// be empty); returns the files written, relative to `dir`.
pub fn write(name: &str, lang: Lang, world: World, dir: &Path) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty: choose another --dir", dir.display()));
    }
    let files = match (lang, world) {
        (Lang::Rust, World::Gatehouse) => rust(name)?,
        (Lang::Python, World::Gatehouse) => python(name),
        (Lang::Js, World::Gatehouse) => js(name),
        (Lang::Rust, World::WasiHttp) => rust_http(name),
        (Lang::Python, World::WasiHttp) => python_http(name),
        (Lang::Js, World::WasiHttp) => js_http(name),
    };
    let mut written = Vec::new();
    for (path, text) in files {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&full, text).map_err(|e| format!("{}: {e}", full.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The route-file lines that serve the plugin, for the READMEs.
fn route_snippet(name: &str) -> String {
    format!("[[route]]\nprefix = \"/api/v1/{name}\"\nauth = \"required\"\nplugin = \"{name}\"\n\n[route.settings]\ngreeting = \"hello\"\n")
}

/// A Rust starter's `Cargo.toml` with `dependencies` (lines).
fn cargo_toml(name: &str, dependencies: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A cdylib is what becomes the component: without it the build succeeds and
# writes no .wasm.
[lib]
crate-type = ["cdylib"]

[dependencies]
{dependencies}
# Small, fast components. A panic traps; the gateway answers that request
# with a 500 and the next one runs on a fresh instance.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#
    )
}

fn rust(name: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let lib = RUST_TEMPLATE.replace("path: \"../../wit\"", "path: \"wit\"");
    if lib == RUST_TEMPLATE {
        return Err("the Rust template no longer names ../../wit: update starter::rust".into());
    }
    let file = name.replace('-', "_");
    let cargo = cargo_toml(name, &format!("wit-bindgen = \"{WIT_BINDGEN}\"\n"));
    let config = r#"# A 64 KiB shadow stack instead of Rust's 1 MiB: every instance (one per
# request) starts ~1 MiB smaller, with less to map and reset. Raise it for a
# plugin that recurses deeply.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=65536"]
"#;
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler (world `gatehouse:plugin/route-handler@{CONTRACT_VERSION}`), in Rust.\n\n\
         Build (once: `rustup target add wasm32-wasip2`):\n\n```sh\ncargo build --release --target wasm32-wasip2\n```\n\n\
         Cargo writes `target/wasm32-wasip2/release/{file}.wasm`. Copy it into the gateway's `plugins/` folder as\n\
         `{name}.wasm` (the file's stem is what a route's `plugin` names); a running gateway loads it at once:\n\n\
         ```sh\ncp target/wasm32-wasip2/release/{file}.wasm /path/to/gatehouse/plugins/{name}.wasm\n```\n\n\
         and a route file serves it:\n\n```toml\n{}```\n\n\
         `src/lib.rs` is the gateway's own template: `handle` gets the verified caller, facts about the request\n\
         and the request, and returns `Action::Respond` or `Action::Forward`. `wit/route-handler.wit` is the\n\
         contract, with every type documented.\n",
        route_snippet(name)
    );
    Ok(vec![
        ("Cargo.toml".into(), cargo),
        (".cargo/config.toml".into(), config.into()),
        ("src/lib.rs".into(), lib),
        ("wit/route-handler.wit".into(), WIT.into()),
        ("README.md".into(), readme),
        (".gitignore".into(), "/target\n".into()),
    ])
}

fn python(name: &str) -> Vec<(PathBuf, String)> {
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler (world `gatehouse:plugin/route-handler@{CONTRACT_VERSION}`), in Python.\n\n\
         Build (once: `pip install componentize-py=={COMPONENTIZE_PY}`):\n\n\
         ```sh\ncomponentize-py -d wit -w route-handler componentize app -o {name}.wasm\n```\n\n\
         Copy `{name}.wasm` into the gateway's `plugins/` folder (its stem is what a route's `plugin` names);\n\
         a running gateway loads it at once, and a route file serves it:\n\n```toml\n{}```\n\n\
         The component carries a Python interpreter: ~18 MB, several seconds to compile the first time (the\n\
         gateway caches the result), and a few milliseconds per request on a fresh instance. `app.py` has\n\
         `handle`; `wit/route-handler.wit` is the contract, with every type documented\n\
         (`componentize-py -d wit -w route-handler bindings .` writes the Python types to read).\n",
        route_snippet(name)
    );
    vec![
        ("app.py".into(), PYTHON_TEMPLATE.into()),
        ("wit/route-handler.wit".into(), WIT.into()),
        ("README.md".into(), readme),
        (".gitignore".into(), "*.wasm\n__pycache__/\n".into()),
    ]
}

/// A JavaScript starter's `package.json`: componentize-js pinned, `npm run
/// build` building `world` from `wit/`.
fn package_json(name: &str, world: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "componentize-js app.js --wit wit --world-name {world} -o {name}.wasm"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}"
  }}
}}
"#
    )
}

fn js(name: &str) -> Vec<(PathBuf, String)> {
    let package = package_json(name, "route-handler");
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler (world `gatehouse:plugin/route-handler@{CONTRACT_VERSION}`), in JavaScript.\n\n\
         Build (Node.js 18 or later; `npm install` fetches componentize-js {COMPONENTIZE_JS} once):\n\n\
         ```sh\nnpm install && npm run build\n```\n\n\
         Copy `{name}.wasm` into the gateway's `plugins/` folder (its stem is what a route's `plugin` names);\n\
         a running gateway loads it at once, and a route file serves it:\n\n```toml\n{}```\n\n\
         `fetch` reaches the route's own service and the services its `calls` lists, by name\n\
         (`http://user-service/...`), with the verified caller's identity headers; anything else fails with\n\
         HTTP-request-denied. Set `lookup = \"http://user-service/api/v1/users/me\"` in `[route.settings]` to see it.\n\n\
         The component carries a JavaScript engine: ~12 MB, a few seconds to compile the first time (the\n\
         gateway caches the result). `app.js` has `handle`; `wit/route-handler.wit` is the contract, with every\n\
         type documented (records arrive as objects with camelCase fields, `option` as a value or `undefined`).\n",
        route_snippet(name)
    );
    vec![
        ("app.js".into(), JS_TEMPLATE.into()),
        ("package.json".into(), package),
        ("wit/route-handler.wit".into(), WIT.into()),
        ("README.md".into(), readme),
        (".gitignore".into(), "*.wasm\nnode_modules/\npackage-lock.json\n".into()),
    ]
}

/// What every wasi:http starter's README says about the request it gets.
const HTTP_CONTRACT: &str = "The gateway hands the component the request as the route's service would get it: the verified\n\
    caller in `x-user-id` / `x-user-tier` (absent on public routes; whatever a client sent there is gone),\n\
    `x-request-id`, `x-forwarded-*`. The route's `[route.settings]` are its environment variables. An\n\
    outgoing request reaches a service the route may call, by name (`http://user-service/...`), with the\n\
    verified identity; anything else fails with HTTP-request-denied. Set\n\
    `lookup = \"http://user-service/api/v1/users/me\"` in `[route.settings]` to see it.\n";

/// The wasi:http WIT files, under `wit/`, as wasi `version` (0.2.12 as
/// vendored; the 0.2 releases differ in documentation and additions only).
fn wasi_http_wit(version: &str) -> Vec<(PathBuf, String)> {
    WASI_HTTP_WIT
        .iter()
        .map(|(path, text)| {
            // The one item 0.2.12 added (`exit-with-code`) stays out of an
            // older release: a gate on a later version is an error there.
            let text = match version {
                "0.2.12" => text.to_string(),
                _ => text
                    .replace("@since(version = 0.2.12)", "@unstable(feature = exit-with-code)")
                    .replace("@0.2.12", &format!("@{version}")),
            };
            (Path::new("wit").join(path), text)
        })
        .collect()
}

fn rust_http(name: &str) -> Vec<(PathBuf, String)> {
    let file = name.replace('-', "_");
    let cargo = cargo_toml(
        name,
        &format!("# wasi 0.2.12's bindings and the `wasi:http/proxy` export macro.\nwasip2 = \"{WASIP2}\"\n"),
    );
    let config = "# A 64 KiB shadow stack instead of Rust's 1 MiB: every instance (one per\n\
                  # request) starts ~1 MiB smaller. Raise it for a plugin that recurses deeply.\n\
                  [target.wasm32-wasip2]\nrustflags = [\"-C\", \"link-arg=-zstack-size=65536\"]\n";
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler of the standard `wasi:http/proxy` world, in Rust (the `wasip2` crate).\n\n\
         Build (once: `rustup target add wasm32-wasip2`):\n\n```sh\ncargo build --release --target wasm32-wasip2\n```\n\n\
         Copy `target/wasm32-wasip2/release/{file}.wasm` into the gateway's `plugins/` folder as `{name}.wasm`\n\
         (the file's stem is what a route's `plugin` names); a running gateway loads it at once, and a route\n\
         file serves it:\n\n```toml\n{}```\n\n{HTTP_CONTRACT}",
        route_snippet(name)
    );
    vec![
        ("Cargo.toml".into(), cargo),
        (".cargo/config.toml".into(), config.into()),
        ("src/lib.rs".into(), RUST_HTTP_TEMPLATE.into()),
        ("README.md".into(), readme),
        (".gitignore".into(), "/target\n".into()),
    ]
}

fn python_http(name: &str) -> Vec<(PathBuf, String)> {
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler of the standard `wasi:http/proxy` world, in Python.\n\n\
         Build (once: `pip install componentize-py=={COMPONENTIZE_PY}`):\n\n\
         ```sh\ncomponentize-py -d wit -w handler componentize app -o {name}.wasm\n```\n\n\
         Copy `{name}.wasm` into the gateway's `plugins/` folder (its stem is what a route's `plugin` names);\n\
         a running gateway loads it at once, and a route file serves it:\n\n```toml\n{}```\n\n{HTTP_CONTRACT}\n\
         `wit/` is `wasi:http/proxy@0.2.12` as the gateway serves it (`componentize-py -d wit -w handler\n\
         bindings .` writes the Python types to read).\n",
        route_snippet(name)
    );
    let mut files = vec![
        ("app.py".into(), PYTHON_HTTP_TEMPLATE.into()),
        ("README.md".into(), readme),
        (".gitignore".into(), "*.wasm\n__pycache__/\n".into()),
    ];
    files.extend(wasi_http_wit("0.2.12"));
    files
}

fn js_http(name: &str) -> Vec<(PathBuf, String)> {
    let package = package_json(name, "handler");
    let readme = format!(
        "# {name}\n\nA Gatehouse route handler of the standard `wasi:http/proxy` world, in JavaScript (a `fetch` event\n\
         handler, componentize-js).\n\n\
         Build (Node.js 18 or later; `npm install` fetches componentize-js {COMPONENTIZE_JS} once):\n\n\
         ```sh\nnpm install && npm run build\n```\n\n\
         Copy `{name}.wasm` into the gateway's `plugins/` folder (its stem is what a route's `plugin` names);\n\
         a running gateway loads it at once, and a route file serves it:\n\n```toml\n{}```\n\n{HTTP_CONTRACT}",
        route_snippet(name)
    );
    let mut files = vec![
        ("app.js".into(), JS_HTTP_TEMPLATE.into()),
        ("package.json".into(), package),
        ("README.md".into(), readme),
        (".gitignore".into(), "*.wasm\nnode_modules/\npackage-lock.json\n".into()),
    ];
    // componentize-js's engine (StarlingMonkey) handles `fetch` events for
    // the wasi:http release it was built with: the world must name that one.
    files.extend(wasi_http_wit(STARLINGMONKEY_WASI));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_file_stems_and_crate_names() {
        for good in ["greeter", "my-plugin", "a1_b2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Greeter", "1st", "../x", "a b", "a.wasm"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_project_is_written_once_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("p");
        let files = write("my-plugin", Lang::Rust, World::Gatehouse, &project).unwrap();
        assert!(files.contains(&PathBuf::from("src/lib.rs")));
        let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
        assert!(lib.contains("path: \"wit\""), "{lib}");
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        assert!(
            readme.contains("release/my_plugin.wasm") && readme.contains("plugins/my-plugin.wasm"),
            "{readme}"
        );
        let again = write("my-plugin", Lang::Python, World::Gatehouse, &project).unwrap_err();
        assert!(again.contains("not empty"), "{again}");
    }

    #[test]
    fn wasi_http_starters_carry_the_wit_their_toolchain_needs() {
        let dir = tempfile::tempdir().unwrap();
        let wit = |lang, name: &str| {
            let project = dir.path().join(name);
            write(name, lang, World::WasiHttp, &project).unwrap();
            std::fs::read_to_string(project.join("wit/deps/http.wit")).ok()
        };
        // The wasip2 crate brings its own.
        assert_eq!(wit(Lang::Rust, "rs"), None);
        let py = wit(Lang::Python, "py").unwrap();
        assert!(py.starts_with("package wasi:http@0.2.12;"), "{}", &py[..40]);
        let js = wit(Lang::Js, "js").unwrap();
        assert!(js.starts_with("package wasi:http@0.2.10;") && !js.contains("0.2.12"));
        let cli = std::fs::read_to_string(dir.path().join("js/wit/deps/cli.wit")).unwrap();
        assert!(!cli.contains("0.2.12"), "a gate on a later release fails to resolve");
    }
}
