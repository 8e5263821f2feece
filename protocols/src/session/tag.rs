//! Record tags: HMAC-SHA256 (RFC 2104) under a key derived from the client's secret keys, over
//! the batch id, the record index and the ciphertext's bytes. The server echoes each input with
//! its tag; the client decrypts an echo only if the tag verifies, i.e. only ciphertexts it made
//! itself for that batch position.

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 of `parts` (concatenated, each prefixed by its length) under `key`.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    k[..32].copy_from_slice(key);
    let pad = |b: u8| -> [u8; BLOCK] { std::array::from_fn(|i| k[i] ^ b) };
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for p in parts {
        inner.update((p.len() as u64).to_le_bytes());
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Constant-time equality of two tags.
pub(crate) fn tags_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bind_every_part() {
        let k = [7u8; 32];
        let t = hmac(&k, &[b"batch", b"1", b"ct"]);
        assert!(tags_equal(&t, &hmac(&k, &[b"batch", b"1", b"ct"])));
        assert!(!tags_equal(&t, &hmac(&k, &[b"batch", b"2", b"ct"])));
        assert!(!tags_equal(&t, &hmac(&k, &[b"batc", b"h1", b"ct"])));
        assert!(!tags_equal(&t, &hmac(&[8u8; 32], &[b"batch", b"1", b"ct"])));
    }
}
