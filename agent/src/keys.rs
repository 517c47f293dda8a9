//! Keyring commands on the API's side: argument parsing, reports as the API
//! shows them, fresh keys.

use std::time::Duration;

use base64::Engine;
use netdb::KeyReport;
use netdb::keyring::{ID_BYTES, KEY_LEN, KeyId, key_id};
use netdb_api as api;
use tonic::Status;

/// How often a running command's report is read.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// A key (base64) given for `install`.
pub(crate) fn parse_key(s: &str) -> Result<Vec<u8>, Status> {
    let key = base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|_| bad_key())?;
    if key.len() != KEY_LEN {
        return Err(bad_key());
    }
    Ok(key)
}

/// The key `use` and `remove` name: its 8-digit fingerprint, or the key.
pub(crate) fn parse_id(s: &str) -> Result<KeyId, Status> {
    let s = s.trim();
    if s.len() == 2 * ID_BYTES && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut id: KeyId = [0; ID_BYTES];
        for (b, pair) in id.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| bad_key())?;
            *b = u8::from_str_radix(hex, 16).map_err(|_| bad_key())?;
        }
        return Ok(id);
    }
    parse_key(s).map(|k| key_id(&k))
}

fn bad_key() -> Status {
    Status::invalid_argument(format!(
        "a key is {KEY_LEN} bytes in base64 (make one with: head -c 32 /dev/urandom | base64); use and remove also take its 8-digit fingerprint"
    ))
}

/// A finished report as the API shows it.
pub(crate) fn step(action: String, r: KeyReport) -> api::KeyStep {
    let complete = r.complete();
    api::KeyStep {
        action,
        results: r
            .replies
            .into_iter()
            .map(|(node, reply)| api::KeyNodeResult {
                node,
                ok: reply.result.is_ok(),
                error: reply.result.err().unwrap_or_default(),
                fingerprints: reply.fingerprints,
                skew_ms: reply.clock.map(|c| c.skew_ms),
                rtt_ms: reply.clock.map_or(0, |c| c.rtt_ms),
            })
            .collect(),
        missing: r.missing,
        complete,
    }
}

/// A fresh random key.
pub(crate) fn generate() -> Result<Vec<u8>, Status> {
    use ring::rand::SecureRandom;
    let mut key = vec![0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Status::internal("the system random generator failed"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdb::keyring::fingerprint;

    #[test]
    fn keys_and_fingerprints_parse() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&key).unwrap(), vec![7; 32]);
        let fp = fingerprint(&key_id(&[7u8; 32]));
        assert_eq!(parse_id(&fp).unwrap(), key_id(&[7u8; 32]));
        assert_eq!(parse_id(&key).unwrap(), key_id(&[7u8; 32]), "or the key itself");
        assert!(parse_key(&fp).is_err(), "install needs the key");
        assert!(parse_id("c2hvcnQ=").is_err());
        assert!(parse_id("not base64!").is_err());
    }
}
