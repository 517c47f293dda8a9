//! The keyring file: written back by the core whenever the keyring
//! changes, so a restart after a rotation holds the current keys.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;

/// Writes the keyring file (base64, primary first) atomically, mode 0600.
pub(crate) fn write_keyring(path: &Path, keys: &[Vec<u8>]) -> std::io::Result<()> {
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
