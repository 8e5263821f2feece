//! Cryptographic randomness: every secret key, mask and noise sample comes from tfhe-csprng
//! (AES-CTR), seeded from the operating system's entropy through tfhe's seeders.

use tfhe::core_crypto::prelude::*;
use tfhe_csprng::generators::RandomGenerator;

/// A fresh seeder over the OS entropy source (rdseed and/or /dev/urandom).
pub(crate) fn seeder() -> Box<dyn Seeder> {
    new_seeder()
}

/// A generator for secret keys.
pub(crate) fn secret_generator() -> SecretRandomGenerator<DefaultRandomGenerator> {
    SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder().seed())
}

/// A generator for encryptions (masks and noise).
pub(crate) fn encryption_generator() -> EncryptionRandomGenerator<DefaultRandomGenerator> {
    let mut s = seeder();
    EncryptionRandomGenerator::<DefaultRandomGenerator>::new(s.seed(), s.as_mut())
}

/// `N` random bytes from the CSPRNG (used for key-set identifiers).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut gen = DefaultRandomGenerator::new(seeder().seed());
    let mut out = [0u8; N];
    for b in out.iter_mut() {
        *b = gen.next().unwrap_or(0);
    }
    out
}
