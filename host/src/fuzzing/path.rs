//! Path normalization, against a reference built the other way round
//! (RFC 3986 §5.2.4's buffer algorithm over the whole path).

use crate::path::{normalize, under_prefix};

const PUBLIC: &str = "/public";
const PROTECTED: &str = "/admin";

/// Input: the path as the URI parser would hand it over (any bytes; the
/// gateway only ever sees visible ASCII, but nothing may panic either way).
pub fn path_normalize(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(out) = normalize(path) else { return };
    assert!(out.starts_with('/'), "{out:?} is not absolute");
    assert!(out.is_ascii(), "{out:?} is not ASCII");
    assert!(!out.contains("//"), "{out:?} has an empty segment");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "{out:?} has a dot segment");
    }
    let upper = out.to_ascii_uppercase();
    for encoded in ["%2F", "%5C", "%2E", "%00"] {
        assert!(!upper.contains(encoded), "{out:?} keeps {encoded}");
    }
    assert!(!out.contains('\\') && !out.bytes().any(|b| b < 0x20 || b == 0x7f), "{out:?}");
    assert_eq!(normalize(&out).as_deref(), Ok(out.as_str()), "normalizing twice changed {out:?}");

    if let Some(reference) = reference(path) {
        assert_eq!(out, reference, "{path:?}");
    }
    // Escapes never move a path out from under a prefix: only a dot
    // segment (literal, or an encoded dot the service would read as one)
    // can.
    if path.starts_with("/public/") && !path.split('/').any(is_dot_segment) {
        assert!(under_prefix(&out, PUBLIC), "{path:?} left {PUBLIC}: {out:?}");
        assert!(!under_prefix(&out, PROTECTED));
    }
}

/// A segment that reads as `.` or `..` once its escapes are decoded.
fn is_dot_segment(raw: &str) -> bool {
    let decoded = raw.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// The normalized form computed differently: decode every escape of an
/// unreserved byte over the whole path, merge slashes, then remove dot
/// segments with the RFC's input/output buffers. `None` where it would
/// refuse (or where the gateway must: an encoded separator, a control
/// byte, a climb above the root).
fn reference(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= 0x20 || b == 0x7f) || path.contains('\\') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))?;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                decoded.push(byte as char);
            } else if byte == b'/' || byte == b'\\' || byte < 0x20 || byte == 0x7f {
                return None;
            } else {
                decoded.push_str(&format!("%{byte:02X}"));
            }
            i += 3;
        } else if bytes[i] >= 0x80 {
            decoded.push_str(&format!("%{:02X}", bytes[i]));
            i += 1;
        } else {
            decoded.push(bytes[i] as char);
            i += 1;
        }
    }
    while decoded.contains("//") {
        decoded = decoded.replace("//", "/");
    }
    // RFC 3986 §5.2.4, counting how far `..` would climb past the root.
    let (mut input, mut output) = (decoded.as_str(), String::new());
    while !input.is_empty() {
        if input == "/." || input.starts_with("/./") {
            input = &input[2..];
            if input.is_empty() {
                input = "/";
            }
        } else if input == "/.." || input.starts_with("/../") {
            input = &input[3..];
            if input.is_empty() {
                input = "/";
            }
            let cut = output.rfind('/')?;
            output.truncate(cut);
        } else {
            let next = input[1..].find('/').map_or(input.len(), |n| n + 1);
            output.push_str(&input[..next]);
            input = &input[next..];
        }
    }
    Some(if output.is_empty() { "/".into() } else { output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathError;

    #[test]
    fn the_reference_agrees_on_known_cases() {
        for (path, want) in [
            ("/a/b", Some("/a/b")),
            ("/a//b/", Some("/a/b/")),
            ("/a/./b/../c", Some("/a/c")),
            ("/a/..", Some("/")),
            ("/%61%2e/x", Some("/a./x")),
            ("/a/%2E%2E/b", Some("/b")),
            ("/caf\u{e9}", Some("/caf%C3%A9")),
            ("/..", None),
            ("/a%2Fb", None),
        ] {
            assert_eq!(reference(path).as_deref(), want, "{path}");
            assert_eq!(normalize(path).ok().as_deref(), want, "{path}");
        }
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
    }
}
