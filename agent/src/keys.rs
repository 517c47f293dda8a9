//! Keyring commands on the agent's side: argument parsing, running one
//! cluster-wide step to completion, the rotation sequence, and writing the
//! keyring back to its file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use netdb::keyops::{KeyOp, KeyReport};
use netdb::keyring::{ID_BYTES, KEY_LEN, KeyId, fingerprint, key_id};
use netdb_proto::api;
use tonic::Status;

/// How often a running command's report is read.
const POLL: Duration = Duration::from_millis(50);

/// A key given on the command line: the key itself, or (for use and
/// remove) its fingerprint.
pub fn parse_key(s: &str, id_allowed: bool) -> Result<KeyOp, Status> {
    let s = s.trim();
    if id_allowed && s.len() == 2 * ID_BYTES && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut id: KeyId = [0; ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad_key())?;
        }
        return Ok(KeyOp::Use(id));
    }
    let key = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad_key())?;
    if key.len() != KEY_LEN {
        return Err(bad_key());
    }
    Ok(KeyOp::Install(key))
}

fn bad_key() -> Status {
    Status::invalid_argument(format!(
        "a key is {KEY_LEN} bytes in base64 (make one with: head -c 32 /dev/urandom | base64); use and remove also take its 8-digit fingerprint"
    ))
}

/// The id a use/remove argument names.
pub fn id_of(op: &KeyOp) -> KeyId {
    match op {
        KeyOp::Install(k) => key_id(k),
        KeyOp::Use(id) | KeyOp::Remove(id) => *id,
        KeyOp::List => [0; ID_BYTES],
    }
}

pub fn action(op: &KeyOp) -> String {
    match op {
        KeyOp::List => "list".into(),
        KeyOp::Install(k) => format!("install {}", fingerprint(&key_id(k))),
        KeyOp::Use(id) => format!("use {}", fingerprint(id)),
        KeyOp::Remove(id) => format!("remove {}", fingerprint(id)),
    }
}

/// A finished report as the API shows it.
pub fn step(action: String, r: KeyReport) -> api::KeyStep {
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
            })
            .collect(),
        missing: r.missing,
        complete,
    }
}

pub fn poll_interval() -> Duration {
    POLL
}

/// A fresh random key.
pub fn generate() -> Result<Vec<u8>, Status> {
    use ring::rand::SecureRandom;
    let mut key = vec![0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Status::internal("the system random generator failed"))?;
    Ok(key)
}

/// Writes the keyring file (base64, primary first) atomically, mode 0600.
pub fn write_keyring(path: &Path, keys: &[Vec<u8>]) -> std::io::Result<()> {
    let mut text = String::from("# netdb gossip keys, primary first; written by the agent\n");
    for k in keys {
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(k));
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fingerprints_parse() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&key, false).unwrap(), KeyOp::Install(vec![7; 32]));
        let fp = fingerprint(&key_id(&[7u8; 32]));
        assert_eq!(parse_key(&fp, true).unwrap(), KeyOp::Use(key_id(&[7u8; 32])));
        assert!(parse_key(&fp, false).is_err(), "install needs the key");
        assert!(parse_key("c2hvcnQ=", true).is_err());
        assert!(parse_key("not base64!", true).is_err());
    }

    #[test]
    fn the_keyring_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("netdb-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        write_keyring(&path, &[vec![1; 32], vec![2; 32]]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let keys = crate::config::parse_keys(text.lines()).unwrap();
        assert_eq!(keys, vec![vec![1; 32], vec![2; 32]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
