//! Plain-text tables of what a configuration loads, for `gatehouse check`
//! and `gatehouse routes`.

use std::fmt::Write;

use crate::config::{AuthConfig, JwksConfig};
use crate::router::Router;
use crate::wasm::plugin::PluginSet;

/// Rows as left-aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The route table, longest prefix first: the order a request is matched in.
pub fn routes(router: &Router) -> String {
    let rows: Vec<Vec<String>> = router
        .routes()
        .iter()
        .map(|r| {
            vec![
                r.prefix.clone(),
                r.service.to_string(),
                format!("{}://{}", r.upstream.scheme, r.upstream.authority),
                format!("{:?}", r.auth).to_lowercase(),
                r.plugin.as_ref().map_or("-".into(), |p| p.name.clone()),
                if r.websocket { "yes".into() } else { "-".into() },
                r.source(),
            ]
        })
        .collect();
    table(
        &["ROUTE", "SERVICE", "UPSTREAM", "AUTH", "PLUGIN", "WEBSOCKET", "DEFINED IN"],
        &rows,
    )
}

/// Every plugin file: its state, version (content hash) and compiler, or why
/// it was refused.
pub fn plugins(set: &PluginSet) -> String {
    let rows: Vec<Vec<String>> = set
        .files
        .iter()
        .map(|(name, e)| {
            let (state, version, compiler, note) = match (&e.refused, &e.serving) {
                (Some(r), _) => ("failed", r.sha256.clone().unwrap_or_default(), "-", r.error.clone()),
                (None, Some(p)) => ("loaded", p.sha256.clone(), p.compiler, String::new()),
                (None, None) => ("failed", String::new(), "-", String::new()),
            };
            let version = if version.len() > 12 { version[..12].to_string() } else { version };
            vec![name.clone(), state.into(), version, compiler.into(), note]
        })
        .collect();
    table(&["PLUGIN", "STATE", "VERSION", "COMPILER", "REFUSED BECAUSE"], &rows)
}

/// The verification keys, by kid and algorithm.
pub fn keys(auth: &AuthConfig) -> String {
    let mut rows = Vec::new();
    if auth.hs256_secret.is_some() {
        rows.push(vec!["-".into(), "HS256".into(), "the shared secret".into()]);
    }
    for k in &auth.keys {
        rows.push(vec![
            k.kid.clone().unwrap_or_else(|| "-".into()),
            format!("{:?}", k.alg),
            "PEM file".into(),
        ]);
    }
    match &auth.jwks {
        Some(JwksConfig::File(path)) => rows.push(vec![
            "(per key)".into(),
            "(per key)".into(),
            format!("JWKS file {}", path.display()),
        ]),
        Some(JwksConfig::Url { url, .. }) => rows.push(vec!["(per key)".into(), "(per key)".into(), format!("JWKS {url}")]),
        None => {}
    }
    table(&["KID", "ALG", "FROM"], &rows)
}
