#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pen_crosstests::fuzz::addr::listen_addr(data));
