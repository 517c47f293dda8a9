//! The push/pull frame decoder, with a small frame limit so the fuzzer
//! also explores the size check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = netdb::Config::default();
    let _ = netdb::codec::decode_sync(&cfg, data);
    let small = netdb::Config { max_sync_frame: 256, ..netdb::Config::default() };
    let _ = netdb::codec::decode_sync(&small, data);
});
