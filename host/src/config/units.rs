//! Human-friendly units in configuration: durations (`"10s"`, `"1m 30s"`) and
//! sizes (`"64KiB"`, `"10MiB"`, or a plain number of bytes).

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written as text, e.g. `"2s"` or `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e} (try \"10s\" or \"500ms\")")))
    }
}

/// A size in bytes, written as a number or as text with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => Bytes::parse(&s)
                .map(Bytes)
                .ok_or_else(|| de::Error::custom(format!("invalid size {s:?} (try 65536, \"64KiB\" or \"10MiB\")"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Bytes::parse("65536"), Some(65536));
        assert_eq!(Bytes::parse("64KiB"), Some(65536));
        assert_eq!(Bytes::parse("10 MiB"), Some(10 << 20));
        assert_eq!(Bytes::parse("1g"), Some(1 << 30));
        assert_eq!(Bytes::parse("ten"), None);
        assert_eq!(Bytes::parse("5 parsecs"), None);
    }
}
