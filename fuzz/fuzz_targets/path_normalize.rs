//! See `gatehouse::fuzzing::path_normalize` for the input format and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::path_normalize(data));
