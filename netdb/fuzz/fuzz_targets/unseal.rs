//! The unseal path: any bytes against a keyring must never panic, and any
//! message that opens must be exactly what sealing its plaintext with its
//! nonce gives (no malleability: one valid ciphertext per plaintext and
//! nonce). The seeds are sealed with this very key, so the fuzzer starts
//! from valid messages and mutates them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netdb::keyring::{KEY_LEN, Keyring};

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::new(&[vec![7u8; KEY_LEN]]).expect("valid key");
    if let Ok(plain) = ring.open(data) {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&data[5..17]);
        assert_eq!(ring.seal(nonce, &plain), data, "an opened message is not its own sealing");
    }
    let sealed = ring.seal([3u8; 12], data);
    assert_eq!(ring.open(&sealed).as_deref(), Ok(data));
});
