//! The access log's writer: one line per request, formatted here in the
//! shapes `tracing_subscriber` gives every other line (human, or flattened
//! JSON) and appended to the same batch writer. Formatting it through
//! tracing's field visitors cost about 15k instructions per request, a
//! third of a proxied request's user-space work; this costs ~1,600 (field
//! names rendered at compile time, a route's own fields once per route,
//! values checked for escapes many bytes at a time).
//!
//! tracing still decides whether the line is wanted, so `GATEHOUSE_LOG`
//! directives (`gatehouse::access=off`) keep working; it is asked once, when
//! the binary installs the sink with its log writer. Without a sink (the
//! library used on its own, as the benches do) access lines are not written.

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

/// Sends access lines to `writer` from now on (once per process), if the
/// installed log filter wants them: call it after the subscriber is set.
/// The filter is asked here once rather than per request (it is fixed for
/// the process's life), which keeps ~100 instructions off every request.
pub fn install(writer: BatchWriter, format: Format) {
    if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        let _ = SINK.set((writer, format));
    }
}

/// A field's name, rendered ahead of time for each format (see [`field!`]):
/// a line puts a dozen of them together per request, and each piece it need
/// not assemble is work saved.
pub struct Field {
    pub(crate) human: &'static str,
    pub(crate) ansi: &'static str,
    pub(crate) json: &'static str,
}

/// `field!("name")`: a [`Field`] whose prefixes are made at compile time.
macro_rules! field {
    ($name:literal) => {
        &$crate::access::Field {
            human: concat!(" ", $name, "="),
            ansi: concat!(" \x1b[3m", $name, "\x1b[0m\x1b[2m=\x1b[0m"),
            json: concat!(",\"", $name, "\":"),
        }
    };
}
pub(crate) use field;

/// Text a line repeats for every request of one route (its prefix,
/// service and upstream), rendered once for the installed format on first
/// use: a copy of those fields, not a scan and escape of each per request.
#[derive(Debug, Default)]
pub struct Cached(OnceLock<String>);

/// A copy of a route (a reload's) renders its own.
impl Clone for Cached {
    fn clone(&self) -> Self {
        Cached::default()
    }
}

/// One access line being written: its fields go in, in order, each
/// rendered straight into the line's buffer.
pub struct Line<'a> {
    out: &'a mut String,
    format: Format,
}

impl Line<'_> {
    /// Text, quoted in the human format (tracing's `field = "..."`).
    pub fn str(&mut self, field: &Field, value: &str) -> &mut Self {
        self.text(field, value, debug_string)
    }

    /// Text shown as it is in the human format (tracing's `field = %value`).
    pub fn plain(&mut self, field: &Field, value: &str) -> &mut Self {
        self.text(field, value, String::push_str)
    }

    /// Text: a JSON string, or in the human format as `human` writes it.
    fn text(&mut self, field: &Field, value: &str, human: fn(&mut String, &str)) -> &mut Self {
        match self.format {
            Format::Json => {
                self.out.push_str(field.json);
                json_string(self.out, value);
            }
            Format::Human { ansi } => {
                self.out.push_str(if ansi { field.ansi } else { field.human });
                human(self.out, value);
            }
        }
        self
    }

    pub fn num(&mut self, field: &Field, value: u64) -> &mut Self {
        self.out.push_str(match self.format {
            Format::Json => field.json,
            Format::Human { ansi: true } => field.ansi,
            Format::Human { ansi: false } => field.human,
        });
        push_digits(self.out, value, 1);
        self
    }

    /// The fields `render` writes, rendered once into `cache` (the same
    /// text every time after).
    pub fn cached(&mut self, cache: &Cached, render: impl FnOnce(&mut Line<'_>)) -> &mut Self {
        let text = cache.0.get_or_init(|| {
            let mut text = String::new();
            render(&mut Line {
                out: &mut text,
                format: self.format,
            });
            text
        });
        self.out.push_str(text);
        self
    }
}

/// Writes one access line whose fields `fields` puts in, if a sink is
/// installed. A field left out is absent from the line, as with tracing.
pub fn write(fields: impl FnOnce(&mut Line<'_>)) {
    let Some((writer, format)) = SINK.get() else {
        return;
    };
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        format_line(line, *format, SystemTime::now(), fields);
        writer.append(line.as_bytes());
    });
}

fn format_line(out: &mut String, format: Format, now: SystemTime, fields: impl FnOnce(&mut Line<'_>)) {
    match format {
        Format::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(out, now);
            out.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
        }
        Format::Human { ansi: true } => {
            out.push_str("\x1b[2m");
            timestamp(out, now);
            out.push_str("\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mgatehouse::access\x1b[0m\x1b[2m:\x1b[0m request");
        }
        Format::Human { ansi: false } => {
            timestamp(out, now);
            out.push_str("  INFO gatehouse::access: request");
        }
    }
    fields(&mut Line { out, format });
    out.push_str(match format {
        Format::Json => ",\"target\":\"gatehouse::access\"}\n",
        Format::Human { .. } => "\n",
    });
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

/// A JSON string literal. Nearly every value needs no escaping at all: it
/// goes in whole; one that does goes in by runs between the bytes to escape.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    if any_byte(s, |b| (b < 0x20) | (b == b'"') | (b == b'\\')) {
        while let Some(i) = rest.bytes().position(|b| b < 0x20 || b == b'"' || b == b'\\') {
            // `i` is an ASCII byte's index, so a character boundary.
            out.push_str(&rest[..i]);
            match rest.as_bytes()[i] {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                c => {
                    let _ = write!(out, "\\u{:04x}", c);
                }
            }
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out.push('"');
}

/// Whether `s` has a byte that `pick` picks. Every byte is looked at (no
/// early exit, no branch per byte), which lets the compiler check many at
/// a time: a clean value, nearly every one, costs a few instructions
/// rather than a few per byte.
fn any_byte(s: &str, pick: impl Fn(u8) -> bool) -> bool {
    s.bytes().fold(false, |found, b| found | pick(b))
}

/// A string as `{:?}` prints it (quoted, escaped), the way tracing's human
/// format shows string fields; plain text takes the short way.
fn debug_string(out: &mut String, s: &str) {
    if !any_byte(s, |b| !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')) {
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

    fn fields(line: &mut Line<'_>) {
        line.str(field!("request_id"), "r-1")
            .plain(field!("method"), "GET")
            .plain(field!("path"), "/a/b")
            .str(field!("error"), "bad \"x\"\\\u{1}")
            .num(field!("status"), 200);
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
        format_line(&mut s, Format::Json, UNIX_EPOCH, fields);
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
        format_line(&mut s, Format::Human { ansi: false }, UNIX_EPOCH, fields);
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000000Z  INFO gatehouse::access: request request_id=\"r-1\" method=GET path=/a/b \
             error=\"bad \\\"x\\\"\\\\\\u{1}\" status=200\n"
        );
    }

    #[test]
    fn coloured_lines_look_like_tracing() {
        let mut s = String::new();
        format_line(&mut s, Format::Human { ansi: true }, UNIX_EPOCH, |line| {
            line.str(field!("request_id"), "r-1").plain(field!("method"), "GET");
        });
        assert_eq!(
            s,
            "\x1b[2m1970-01-01T00:00:00.000000Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mgatehouse::access\x1b[0m\x1b[2m:\x1b[0m \
             request \x1b[3mrequest_id\x1b[0m\x1b[2m=\x1b[0m\"r-1\" \x1b[3mmethod\x1b[0m\x1b[2m=\x1b[0mGET\n"
        );
    }

    #[test]
    fn cached_fields_are_rendered_once_and_copied_after() {
        let cache = Cached::default();
        let mut s = String::new();
        for (i, value) in ["first", "second"].into_iter().enumerate() {
            format_line(&mut s, Format::Json, UNIX_EPOCH, |line| {
                line.cached(&cache, |line| {
                    line.str(field!("route"), value).str(field!("quote"), "a\"b");
                })
                .num(field!("n"), i as u64);
            });
        }
        let lines: Vec<serde_json::Value> = s.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["route"], "first");
        assert_eq!(lines[1]["route"], "first", "the cache renders once");
        assert_eq!(lines[1]["quote"], "a\"b");
        assert_eq!(lines[1]["n"], 1);
        assert!(cache.clone().0.get().is_none(), "a copy renders its own");
    }

    #[test]
    fn human_strings_print_as_debug_does() {
        for text in ["plain", "q\"uote", "back\\slash", "naïve ✓", "ctl\u{1}\u{7f}", ""] {
            let mut out = String::new();
            debug_string(&mut out, text);
            assert_eq!(out, format!("{text:?}"));
        }
    }
}
