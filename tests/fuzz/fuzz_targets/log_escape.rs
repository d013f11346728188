#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pen_crosstests::fuzz::escape::log_escape(data));
