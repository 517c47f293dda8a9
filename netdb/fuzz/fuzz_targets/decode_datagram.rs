//! Every datagram decoder path: any bytes, no panic, bounded work.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = netdb::Config::default();
    let _ = netdb::codec::decode_datagram(&cfg, data, Vec::new());
});
