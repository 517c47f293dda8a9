//! A container's DNS query, over UDP or TCP, to the embedded DNS; see
//! `netdb_agent::fuzzing::dns_query` for the input's layout and what is
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netdb_agent::fuzzing::dns_query(data));
