//! The keys that seal every datagram and push/pull frame: AES-256-GCM
//! (ring). A sealed message is `[1][key id: 4][nonce: 12][ciphertext+tag]`;
//! the key id (the first 4 bytes of the key's SHA-256) picks the key
//! directly instead of trying each. The first key is the primary, which
//! seals; the others only open, so keys rotate without a flag day: install
//! the new key everywhere, make it primary, remove the old one.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::stats::DropReason;

/// Bytes of an AES-256-GCM key.
pub const KEY_LEN: usize = 32;
const ENVELOPE_VERSION: u8 = 1;
const ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;
/// Bytes sealing adds to a message. Packet budgets always leave room for
/// it, so a keyed cluster sends the same packets as a plaintext one.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Bytes of a key id.
pub const ID_BYTES: usize = ID_LEN;
/// A key's id: the first bytes of its SHA-256; names the key in sealed
/// headers and commands without revealing it.
pub type KeyId = [u8; ID_LEN];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Why a keyring change was refused.
pub enum KeyError {
    /// No key given.
    #[error("a keyring needs at least one key")]
    Empty,
    /// Key number .0 has .1 bytes, not [`KEY_LEN`].
    #[error("key {0} is {1} bytes; keys are {KEY_LEN} bytes")]
    BadLength(usize, usize),
    /// No installed key has that fingerprint.
    #[error("key {0} is not installed")]
    NotInstalled(String),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary; make another key primary first")]
    RemovePrimary(String),
}

/// A key id as shown to people.
pub fn fingerprint(id: &KeyId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

struct Slot {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
    /// Kept to write the keyring back to its file; never logged.
    key: Vec<u8>,
}

/// One primary key (seals) and older keys (open only).
pub struct Keyring {
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Keyring {
    // Fingerprints only: key material is never printed or logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("fingerprints", &self.fingerprints()).finish()
    }
}

/// The short id of a key, also its public fingerprint.
pub fn key_id(key: &[u8]) -> KeyId {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&d.as_ref()[..ID_LEN]);
    id
}

/// Key of one epoch of scheduled rotation: HKDF-SHA256 of the cluster
/// secret, the epoch number as the info.
pub fn epoch_key(secret: &[u8], epoch: u64) -> Vec<u8> {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"netdb gossip key v1");
    let prk = salt.extract(secret);
    let info = epoch.to_be_bytes();
    let mut key = vec![0u8; KEY_LEN];
    // `expand` and `fill` fail only for outputs over 255 hash lengths.
    if let Ok(okm) = prk.expand(&[&info[..]], Len) {
        let _ = okm.fill(&mut key);
    }
    key
}

/// The epoch a clock reading falls in.
pub fn epoch_at(unix: std::time::Duration, period: std::time::Duration) -> u64 {
    (unix.as_secs() / period.as_secs().max(1)).max(1)
}

fn slot(key: &[u8]) -> Option<Slot> {
    if key.len() != KEY_LEN {
        return None;
    }
    let unbound = UnboundKey::new(&AES_256_GCM, key).ok()?;
    Some(Slot { id: key_id(key), aead: LessSafeKey::new(unbound), key: key.to_vec() })
}

impl Keyring {
    /// The first key is the primary; duplicates are ignored.
    pub fn new(keys: &[Vec<u8>]) -> Result<Keyring, KeyError> {
        let mut slots: Vec<Slot> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if k.len() != KEY_LEN {
                return Err(KeyError::BadLength(i + 1, k.len()));
            }
            let id = key_id(k);
            if slots.iter().any(|s| s.id == id) {
                continue;
            }
            slots.push(slot(k).ok_or(KeyError::BadLength(i + 1, k.len()))?);
        }
        if slots.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring { slots })
    }

    /// Scheduled rotation: the epoch's key seals; the previous and the
    /// next epoch's keys open too, so nodes whose clocks straddle a
    /// boundary still understand each other.
    pub fn for_epoch(secret: &[u8], epoch: u64) -> Keyring {
        let keys: Vec<Vec<u8>> = [epoch, epoch.saturating_sub(1), epoch.saturating_add(1)]
            .into_iter()
            .map(|e| epoch_key(secret, e))
            .collect();
        // Three 32-byte keys: `new` cannot fail.
        Keyring::new(&keys).unwrap_or_else(|_| unreachable!("derived keys have the right length"))
    }

    /// Hex fingerprints, primary first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.slots.iter().map(|s| fingerprint(&s.id)).collect()
    }

    /// The id of the key that seals outgoing messages.
    pub fn primary(&self) -> KeyId {
        self.slots[0].id
    }

    /// The keys, primary first, for writing the keyring file.
    pub fn export(&self) -> Vec<Vec<u8>> {
        self.slots.iter().map(|s| s.key.clone()).collect()
    }

    /// Adds a key that opens (not the primary); `false` if it was there.
    pub fn install(&mut self, key: &[u8]) -> Result<bool, KeyError> {
        let s = slot(key).ok_or(KeyError::BadLength(1, key.len()))?;
        if self.slots.iter().any(|x| x.id == s.id) {
            return Ok(false);
        }
        self.slots.push(s);
        Ok(true)
    }

    /// Makes an installed key the primary; `false` if it was already.
    pub fn use_key(&mut self, id: &KeyId) -> Result<bool, KeyError> {
        let i = self.position(id)?;
        if i == 0 {
            return Ok(false);
        }
        let s = self.slots.remove(i);
        self.slots.insert(0, s);
        Ok(true)
    }

    /// Removes a key that is not the primary; `false` if it was not there.
    pub fn remove(&mut self, id: &KeyId) -> Result<bool, KeyError> {
        match self.position(id) {
            Ok(0) => Err(KeyError::RemovePrimary(fingerprint(id))),
            Ok(i) => {
                self.slots.remove(i);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn position(&self, id: &KeyId) -> Result<usize, KeyError> {
        self.slots
            .iter()
            .position(|s| s.id == *id)
            .ok_or_else(|| KeyError::NotInstalled(fingerprint(id)))
    }

    /// Seals `plain` with the primary key. The nonce must never repeat for
    /// a key: the node draws it from its seeded CSPRNG.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
        let primary = &self.slots[0];
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&primary.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        // The header is authenticated too: a changed key id or version fails.
        let aad = Aad::from(out.clone());
        if primary
            .aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut body)
            .is_err()
        {
            // Only for messages over ~64 GiB, which nothing here makes.
            return Vec::new();
        }
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed message: `Plaintext` if it is not one, `UnknownKey` if
    /// no key of ours made it, `Forged` if it fails authentication.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, DropReason> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != ENVELOPE_VERSION {
            return Err(DropReason::Plaintext);
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        let slot = self
            .slots
            .iter()
            .find(|s| s.id[..] == header[1..1 + ID_LEN])
            .ok_or(DropReason::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[1 + ID_LEN..]);
        let mut buf = body.to_vec();
        let plain = slot
            .aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut buf)
            .map_err(|_| DropReason::Forged)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> Vec<u8> {
        vec![b; KEY_LEN]
    }

    #[test]
    fn seal_open_round_trip_and_overhead() {
        let ring = Keyring::new(&[k(1)]).unwrap();
        let sealed = ring.seal([7; NONCE_LEN], b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(ring.open(&sealed).unwrap(), b"hello");
        assert_ne!(&sealed[HEADER_LEN..HEADER_LEN + 5], b"hello", "the body is encrypted");
    }

    #[test]
    fn wrong_key_tampering_and_plaintext_are_told_apart() {
        let a = Keyring::new(&[k(1)]).unwrap();
        let b = Keyring::new(&[k(2)]).unwrap();
        let sealed = a.seal([1; NONCE_LEN], b"entry");
        assert_eq!(b.open(&sealed), Err(DropReason::UnknownKey));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            let r = a.open(&bad);
            assert!(r.is_err(), "flipping byte {i} must not open");
        }
        assert_eq!(a.open(b"plain text packet that is long enough"), Err(DropReason::Plaintext));
        assert_eq!(a.open(&sealed[..SEAL_OVERHEAD - 1]), Err(DropReason::Plaintext));
    }

    #[test]
    fn rotation_opens_old_and_seals_new() {
        let old = Keyring::new(&[k(1)]).unwrap();
        let rotated = Keyring::new(&[k(2), k(1)]).unwrap();
        let from_old = old.seal([3; NONCE_LEN], b"x");
        assert_eq!(rotated.open(&from_old).unwrap(), b"x", "older keys still open");
        let from_new = rotated.seal([4; NONCE_LEN], b"y");
        assert_eq!(old.open(&from_new), Err(DropReason::UnknownKey), "the primary seals");
        assert_eq!(rotated.fingerprints().len(), 2);
        assert_eq!(Keyring::new(&[k(1), k(1)]).unwrap().fingerprints().len(), 1);
        assert_eq!(Keyring::new(&[]).unwrap_err(), KeyError::Empty);
        assert_eq!(Keyring::new(&[vec![0; 16]]).unwrap_err(), KeyError::BadLength(1, 16));
        assert!(!format!("{rotated:?}").contains("0101"), "no key material in Debug");
    }

    #[test]
    fn epoch_keyrings_overlap_by_one_epoch() {
        let secret = b"a cluster secret of some length";
        let e5 = Keyring::for_epoch(secret, 5);
        let e6 = Keyring::for_epoch(secret, 6);
        let e7 = Keyring::for_epoch(secret, 7);
        let m5 = e5.seal([1; NONCE_LEN], b"x");
        let m6 = e6.seal([2; NONCE_LEN], b"y");
        assert_eq!(e6.open(&m5).unwrap(), b"x", "the next epoch opens the previous one's");
        assert_eq!(e5.open(&m6).unwrap(), b"y", "and the previous the next one's");
        assert_eq!(e7.open(&m5), Err(DropReason::UnknownKey), "two epochs apart: refused");
        assert_ne!(epoch_key(secret, 5), epoch_key(secret, 6));
        assert_ne!(epoch_key(secret, 5), epoch_key(b"another secret", 5));
        assert_eq!(epoch_key(secret, 5), epoch_key(secret, 5));
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(epoch_at(std::time::Duration::from_secs(7200 + 59), hour), 2);
    }

    #[test]
    fn install_use_remove_follow_the_safe_order() {
        let mut ring = Keyring::new(&[k(1)]).unwrap();
        let (id1, id2) = (key_id(&k(1)), key_id(&k(2)));
        assert_eq!(ring.use_key(&id2), Err(KeyError::NotInstalled(fingerprint(&id2))));
        assert_eq!(ring.install(&k(2)), Ok(true));
        assert_eq!(ring.install(&k(2)), Ok(false));
        assert_eq!(ring.primary(), id1, "installing does not change the primary");
        assert_eq!(ring.remove(&id1), Err(KeyError::RemovePrimary(fingerprint(&id1))));
        assert_eq!(ring.use_key(&id2), Ok(true));
        assert_eq!(ring.use_key(&id2), Ok(false));
        assert_eq!(ring.remove(&id1), Ok(true));
        assert_eq!(ring.remove(&id1), Ok(false));
        assert_eq!(ring.export(), vec![k(2)]);
        assert!(ring.install(&[0; 5]).is_err());
    }
}
