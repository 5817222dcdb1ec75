//! Request path normalization: the one form the router matches and the upstream
//! receives, so the gateway and the service can never disagree on the target.
//!
//! Following RFC 3986 §6.2.2: percent-encoded unreserved characters are
//! decoded (`%75sers` is `users`), remaining escapes get upper-case hex, dot
//! segments are resolved and repeated slashes merged, raw UTF-8 is
//! percent-encoded (so the result is ASCII). What a downstream could
//! read as a different path is refused instead: an encoded `/` or `\`, a raw
//! `\`, a NUL or control byte, a broken escape, or `..` climbing above the root.

use std::fmt;

/// Why a path cannot be normalized safely; each maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `\`: a segment boundary a downstream may see differently.
    AmbiguousSeparator,
    /// A control byte, raw or encoded.
    ControlByte,
    /// More `..` segments than there are segments to remove.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with '/'",
            PathError::BadEscape => "malformed percent-encoding in path",
            PathError::AmbiguousSeparator => "encoded or backslash path separator is not allowed",
            PathError::ControlByte => "control character in path",
            PathError::AboveRoot => "path climbs above the root",
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes unreserved escapes and upper-cases the rest, refusing ambiguous input.
fn decode_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1).and_then(|&c| hex(c)), bytes.get(i + 2).and_then(|&c| hex(c))) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadEscape),
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::AmbiguousSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlByte),
                    d if is_unreserved(d) => out.push(d as char),
                    d => out.push_str(&format!("%{d:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::AmbiguousSeparator),
            0..=0x1f | 0x7f => return Err(PathError::ControlByte),
            // Raw UTF-8 (the URI parser lets it through): percent-encoded
            // byte by byte, the form a URI gives it (RFC 3987 §3.1), so the
            // service gets the bytes the client sent and the result is ASCII.
            0x80.. => {
                out.push_str(&format!("%{b:02X}"));
                i += 1;
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Normalizes an absolute path (no query). The result starts with `/`, has no
/// empty, `.` or `..` segments, and keeps a trailing slash if the input had one.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if is_normal(path) {
        return Ok(path.to_owned());
    }
    general(path)
}

/// [`normalize`] for any path: decodes and resolves segment by segment.
fn general(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let mut seg = String::with_capacity(raw.len());
        decode_segment(raw, &mut seg)?;
        trailing_slash = false;
        match seg.as_str() {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// True when `path` is already what [`normalize`] makes of it (the usual
/// case): absolute, no escapes, backslashes or control bytes, no empty
/// segment but a trailing one, no `.` or `..` segment. Checked in one pass
/// with no allocation; the general path allocates per segment.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.bytes().any(|b| matches!(b, b'%' | b'\\' | 0..=0x1f | 0x7f..)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

/// True when `path` lies under `prefix` on a segment boundary. Both must be
/// normalized; `prefix` has no trailing slash (except the root `/`).
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path and the general one agree on every path built from
    /// the pieces that matter (separators, dots, escapes, letters).
    #[test]
    fn fast_path_agrees_with_the_general_one() {
        let pieces = ["/", "a", ".", "..", "%2e", "%41", "%2F", "\\", "b/", "//", "~", "%zz", "\t", "/."];
        let (mut checked, mut normal) = (0, 0);
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in ["", "/", "x", "/.."] {
                        let path = format!("/{a}{b}{c}{d}");
                        if is_normal(&path) {
                            assert_eq!(general(&path), Ok(path.clone()), "{path}");
                            normal += 1;
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000 && normal > 100, "{checked} paths, {normal} normal");
        assert!(is_normal("/api/v1/users/") && is_normal("/") && !is_normal("") && !is_normal("/a//b"));
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/api/areas", "/api/v1/users/42", "/api/v1/users/", "/a/b%20c", "/x-y_z~"] {
            assert_eq!(normalize(p).unwrap(), p);
        }
    }

    #[test]
    fn dots_slashes_and_escapes_are_resolved() {
        let cases = [
            ("/webhooks/polar/../../api/v1/users", "/api/v1/users"),
            ("/webhooks/polar/%2e%2e/%2E%2E/api/v1/users", "/api/v1/users"),
            ("/webhooks/polar/.%2e/x", "/webhooks/x"),
            ("//api//v1///users", "/api/v1/users"),
            ("/api/./areas/.", "/api/areas/"),
            ("/api/v1/%75sers", "/api/v1/users"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/é", "/a/%C3%A9"),
            ("/a/%C3%A9/é", "/a/%C3%A9/%C3%A9"),
            ("/api/..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/webhooks/polar/..%2f..%2fapi", PathError::AmbiguousSeparator),
            ("/webhooks/polar/..%5c..%5capi", PathError::AmbiguousSeparator),
            ("/webhooks\\..\\api", PathError::AmbiguousSeparator),
            ("/a/%00", PathError::ControlByte),
            ("/a/%zz", PathError::BadEscape),
            ("/a/%4", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        assert!(under_prefix("/api/v1/users", "/api/v1/users"));
        assert!(under_prefix("/api/v1/users/", "/api/v1/users"));
        assert!(under_prefix("/api/v1/users/7", "/api/v1/users"));
        assert!(!under_prefix("/api/v1/usersX", "/api/v1/users"));
        assert!(!under_prefix("/api/v1", "/api/v1/users"));
        assert!(under_prefix("/anything", "/"));
    }
}
