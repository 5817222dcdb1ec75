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
/// The wit-bindgen release the bundled plugins build with.
const WIT_BINDGEN: &str = "0.61";
/// The componentize-py release the test suite builds the Python starter with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript starter pins.
pub const COMPONENTIZE_JS: &str = "0.23.0";

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
pub fn write(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty: choose another --dir", dir.display()));
    }
    let files = match lang {
        Lang::Rust => rust(name)?,
        Lang::Python => python(name),
        Lang::Js => js(name),
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

fn rust(name: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let lib = RUST_TEMPLATE.replace("path: \"../../wit\"", "path: \"wit\"");
    if lib == RUST_TEMPLATE {
        return Err("the Rust template no longer names ../../wit: update starter::rust".into());
    }
    let file = name.replace('-', "_");
    let cargo = format!(
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
wit-bindgen = "{WIT_BINDGEN}"

# Small, fast components. A panic traps; the gateway answers that request
# with a 500 and the next one runs on a fresh instance.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#
    );
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

fn js(name: &str) -> Vec<(PathBuf, String)> {
    let package = format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "componentize-js app.js --wit wit --world-name route-handler -o {name}.wasm"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}"
  }}
}}
"#
    );
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
        let files = write("my-plugin", Lang::Rust, &project).unwrap();
        assert!(files.contains(&PathBuf::from("src/lib.rs")));
        let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
        assert!(lib.contains("path: \"wit\""), "{lib}");
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        assert!(
            readme.contains("release/my_plugin.wasm") && readme.contains("plugins/my-plugin.wasm"),
            "{readme}"
        );
        let again = write("my-plugin", Lang::Python, &project).unwrap_err();
        assert!(again.contains("not empty"), "{again}");
    }
}
