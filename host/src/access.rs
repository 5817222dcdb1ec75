//! The access log's writer: one line per request, formatted here in the
//! shapes `tracing_subscriber` gives every other line (human, or flattened
//! JSON) and appended to the same batch writer. Formatting it through
//! tracing's field visitors cost about 15k instructions per request, a
//! third of a proxied request's user-space work; this costs a few hundred.
//!
//! tracing still decides whether the line is wanted, so `GATEHOUSE_LOG`
//! directives (`gatehouse::access=off`) keep working. The binary installs
//! the sink with its log writer; without one (the library used on its own,
//! as the benches do) access lines are not written.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::logsink::BatchWriter;

/// The log target of access lines.
pub const TARGET: &str = "gatehouse::access";

/// How lines are shaped, as `--log-format` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// tracing's default format; colours when `ansi`.
    Human { ansi: bool },
    /// One JSON object per line, fields at the top level.
    Json,
}

static SINK: OnceLock<(BatchWriter, Format)> = OnceLock::new();

/// Sends access lines to `writer` from now on (once per process).
pub fn install(writer: BatchWriter, format: Format) {
    let _ = SINK.set((writer, format));
}

/// A field's value.
pub enum Value<'a> {
    /// Text, quoted in the human format (tracing's `field = "..."`).
    Str(&'a str),
    /// Text shown as it is in the human format (tracing's `field = %value`).
    Plain(&'a str),
    Num(u64),
}

/// Writes one access line with `fields` (a `None` value leaves the field
/// out, as tracing does), if a sink is installed.
pub fn write(fields: &[(&str, Option<Value<'_>>)]) {
    let Some((writer, format)) = SINK.get() else {
        return;
    };
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        format_line(&mut line, *format, SystemTime::now(), fields);
        writer.append(line.as_bytes());
    });
}

fn format_line(out: &mut String, format: Format, now: SystemTime, fields: &[(&str, Option<Value<'_>>)]) {
    let present = fields.iter().filter_map(|(name, value)| value.as_ref().map(|v| (*name, v)));
    match format {
        Format::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(out, now);
            out.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
            for (name, value) in present {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                match value {
                    Value::Str(s) | Value::Plain(s) => json_string(out, s),
                    Value::Num(n) => push_digits(out, *n, 1),
                }
            }
            out.push_str(",\"target\":\"");
            out.push_str(TARGET);
            out.push_str("\"}\n");
        }
        Format::Human { ansi } => {
            let (dim, italic, green, reset) = if ansi {
                ("\x1b[2m", "\x1b[3m", "\x1b[32m", "\x1b[0m")
            } else {
                ("", "", "", "")
            };
            out.push_str(dim);
            timestamp(out, now);
            out.push_str(reset);
            out.push(' ');
            out.push_str(green);
            out.push_str(" INFO");
            out.push_str(reset);
            out.push(' ');
            out.push_str(dim);
            out.push_str(TARGET);
            out.push_str(reset);
            out.push_str(dim);
            out.push(':');
            out.push_str(reset);
            out.push_str(" request");
            for (name, value) in present {
                out.push(' ');
                out.push_str(italic);
                out.push_str(name);
                out.push_str(reset);
                out.push_str(dim);
                out.push('=');
                out.push_str(reset);
                match value {
                    Value::Str(s) => debug_string(out, s),
                    Value::Plain(s) => out.push_str(s),
                    Value::Num(n) => push_digits(out, *n, 1),
                }
            }
            out.push('\n');
        }
    }
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber prints it:
/// `2026-12-02T04:05:01.123456Z`.
fn timestamp(out: &mut String, now: SystemTime) {
    // Up to the second, the text changes once a second: kept per thread.
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != since.as_secs() {
            *at = since.as_secs();
            text.clear();
            date_time(text, since.as_secs());
        }
        out.push_str(text);
    });
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn date_time(out: &mut String, secs: u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    push_digits(out, year.max(0) as u64, 4);
    out.push('-');
    push_digits(out, u64::from(month), 2);
    out.push('-');
    push_digits(out, u64::from(day), 2);
    out.push('T');
    push_digits(out, rem / 3600, 2);
    out.push(':');
    push_digits(out, rem % 3600 / 60, 2);
    out.push(':');
    push_digits(out, rem % 60, 2);
    out.push('.');
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (`itoa`:
/// two digits per step, no formatting machinery; this runs several times
/// per request).
fn push_digits(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A string as `{:?}` prints it (quoted, escaped), the way tracing's human
/// format shows string fields; plain text takes the short way.
fn debug_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fields() -> Vec<(&'static str, Option<Value<'static>>)> {
        vec![
            ("request_id", Some(Value::Str("r-1"))),
            ("method", Some(Value::Plain("GET"))),
            ("path", Some(Value::Plain("/a/b"))),
            ("error", Some(Value::Str("bad \"x\"\\\u{1}"))),
            ("user", None),
            ("status", Some(Value::Num(200))),
        ]
    }

    #[test]
    fn timestamps_match_tracing_subscriber() {
        let mut s = String::new();
        timestamp(&mut s, UNIX_EPOCH + Duration::new(1_764_648_301, 123_456_789));
        assert_eq!(s, "2025-12-02T04:05:01.123456Z");
        s.clear();
        // A leap day, and the epoch itself.
        timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
        s.clear();
        timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn digits_are_padded() {
        let mut s = String::new();
        push_digits(&mut s, 0, 1);
        push_digits(&mut s, 7, 2);
        push_digits(&mut s, 1234, 2);
        push_digits(&mut s, u64::MAX, 1);
        assert_eq!(s, format!("0071234{}", u64::MAX));
    }

    #[test]
    fn json_strings_round_trip_whatever_they_hold() {
        for text in [
            "",
            "plain /api/v1/x",
            "q\"uote\\back",
            "line\nfeed\r\ttab",
            "ctl\u{1}\u{1f}\u{8}",
            "naïve ✓ 日本",
            "\"\"\\",
        ] {
            let mut out = String::new();
            json_string(&mut out, text);
            let back: String = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
            assert_eq!(back, text, "{out}");
        }
    }

    #[test]
    fn json_lines_parse_and_leave_absent_fields_out() {
        let mut s = String::new();
        format_line(&mut s, Format::Json, UNIX_EPOCH, &fields());
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["error"], "bad \"x\"\\\u{1}");
        assert_eq!(v["status"], 200);
        assert!(v.get("user").is_none());
    }

    #[test]
    fn human_lines_look_like_tracing() {
        let mut s = String::new();
        format_line(&mut s, Format::Human { ansi: false }, UNIX_EPOCH, &fields());
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000000Z  INFO gatehouse::access: request request_id=\"r-1\" method=GET path=/a/b \
             error=\"bad \\\"x\\\"\\\\\\u{1}\" status=200\n"
        );
    }
}
