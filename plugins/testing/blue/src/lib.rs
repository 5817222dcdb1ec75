//! `blue`: one of the two builds the hot-reload tests swap back and forth.

const VERSION: &str = "blue";

include!("../../version.rs");
