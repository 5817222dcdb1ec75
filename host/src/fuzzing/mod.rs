//! Fuzzing oracles: each function takes arbitrary bytes, drives one of the
//! gateway's parsers or rules with them, and panics when a property that
//! must hold for every input does not. The libFuzzer targets in `fuzz/`
//! call them (`make fuzz`, nightly), and the inputs they found are replayed
//! on stable by this module's tests (`fuzz/regressions/<target>/`).
//!
//! Compiled only for tests and with the `fuzzing` feature: never part of
//! the gateway.

mod headers;
mod path;
mod token;
mod upstream;

pub use headers::header_strip;
pub use path::path_normalize;
pub use token::token;
pub use upstream::upstream_response;

#[cfg(test)]
mod tests;
