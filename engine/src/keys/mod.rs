//! Key generation and key files.
//!
//! The client key holds two binary secret keys: the *small* LWE key (dimension n, what PBS inputs
//! are keyswitched to) and the *big* GLWE key (k x N, which, flattened, is also the LWE key of PBS
//! outputs and of values sample-extracted from packed GLWE ciphertexts). The server key holds only
//! encryptions of those secrets: the Fourier bootstrapping key, the big-to-small keyswitching key,
//! the LWE-to-GLWE packing keyswitching key, and the private functional packing keys of circuit
//! bootstrapping. Every key remembers its preset and a random key-set id, and so does every
//! ciphertext made with it.

use crate::error::{EngineError, Result};
use crate::format::{self, KeySetId, ObjectKind};
use crate::preset::Preset;
use crate::random;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

mod server;
mod sizes;

pub use server::{CompressedServerKey, ServerKey};
pub use sizes::KeySizes;

/// The client's secret keys.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientKey {
    preset: Preset,
    key_set: KeySetId,
    pub(crate) small_sk: LweSecretKeyOwned<u64>,
    pub(crate) glwe_sk: GlweSecretKeyOwned<u64>,
}

/// The secret key material is overwritten (with writes the compiler may not elide) when a
/// client key is dropped, so that it does not linger in freed memory.
impl Drop for ClientKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.small_sk.as_mut().zeroize();
        self.glwe_sk.as_mut().zeroize();
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientKey {{ preset: {}, key_set: {} }}",
            self.preset.name, self.key_set
        )
    }
}

fn modulus() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
}

/// Converts a standard bootstrapping key to the Fourier domain (in parallel).
pub(super) fn to_fourier(std_bsk: &LweBootstrapKeyOwned<u64>) -> FourierLweBootstrapKeyOwned {
    let mut bsk = FourierLweBootstrapKey::new(
        std_bsk.input_lwe_dimension(),
        std_bsk.glwe_size(),
        std_bsk.polynomial_size(),
        std_bsk.decomposition_base_log(),
        std_bsk.decomposition_level_count(),
    );
    par_convert_standard_lwe_bootstrap_key_to_fourier(std_bsk, &mut bsk);
    bsk
}

impl ClientKey {
    /// Draws fresh secret keys for `preset` from the CSPRNG.
    pub fn generate(preset: &Preset) -> ClientKey {
        let mut secret = random::secret_generator();
        let small_sk =
            allocate_and_generate_new_binary_lwe_secret_key(preset.lwe_dimension(), &mut secret);
        let glwe_sk = allocate_and_generate_new_binary_glwe_secret_key(
            preset.glwe_dimension(),
            preset.polynomial_size(),
            &mut secret,
        );
        ClientKey {
            preset: preset.clone(),
            key_set: KeySetId(random::random_bytes()),
            small_sk,
            glwe_sk,
        }
    }

    pub fn preset(&self) -> &Preset {
        &self.preset
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }

    /// A 32-byte secret derived from the secret keys for `purpose` (a domain-separation label):
    /// the client authenticates its own uploads with it (see the protocols' record tags), so
    /// that it decrypts only ciphertexts it made. SHA-256 over the label and the key bits.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"veilmoe-derived-secret-v1\0");
        h.update((purpose.len() as u64).to_le_bytes());
        h.update(purpose.as_bytes());
        for v in self.small_sk.as_ref().iter().chain(self.glwe_sk.as_ref()) {
            h.update(v.to_le_bytes());
        }
        h.finalize().into()
    }

    /// The big LWE key: the GLWE key flattened (k * N coefficients).
    pub(crate) fn big_lwe_sk(&self) -> LweSecretKey<&[u64]> {
        self.glwe_sk.as_lwe_secret_key()
    }

    /// Generates the full (uncompressed) server key. Uses all rayon threads.
    pub fn server_key(&self) -> ServerKey {
        self.server_key_with_progress(&mut |_, _| {})
    }

    /// As [`ClientKey::server_key`], calling `progress(done, total)` between the key parts:
    /// the seeded key of [`ClientKey::compressed_server_key_with_progress`], expanded. One
    /// recipe per key part, two forms.
    pub fn server_key_with_progress(&self, progress: &mut dyn FnMut(usize, usize)) -> ServerKey {
        self.compressed_server_key_with_progress(progress)
            .decompress()
    }

    /// Generates the server key in seeded (compressed) form: what a server key file holds.
    pub fn compressed_server_key(&self) -> CompressedServerKey {
        self.compressed_server_key_with_progress(&mut |_, _| {})
    }

    /// As [`ClientKey::compressed_server_key`], calling `progress(done, total)` between the
    /// key parts.
    pub fn compressed_server_key_with_progress(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> CompressedServerKey {
        let mut seeder = random::seeder();
        progress(0, 5);
        let bsk = self.seeded_bootstrap_key(self.preset.pbs, seeder.as_mut());
        progress(1, 5);
        let ksk = self.seeded_keyswitch_key(seeder.as_mut());
        progress(2, 5);
        let pksk = self.seeded_packing_keyswitch_key(seeder.as_mut());
        progress(3, 5);
        let cbs_bsk =
            self.seeded_bootstrap_key(self.preset.circuit_bootstrap.pbs(), seeder.as_mut());
        progress(4, 5);
        let cbs_pfpksk = self.cbs_packing_keys();
        progress(5, 5);
        CompressedServerKey {
            preset: self.preset.clone(),
            key_set: self.key_set,
            bsk,
            ksk,
            pksk,
            cbs_bsk,
            cbs_pfpksk,
        }
    }

    /// The server key file's bytes: the seeded form (see [`ServerKey::from_bytes`]).
    pub fn server_key_file(&self) -> Result<Vec<u8>> {
        self.compressed_server_key().to_bytes()
    }

    /// Only what one keyswitch + PBS needs (Fourier bootstrapping key, keyswitching key), for
    /// timing a PBS on a preset without generating the circuit-bootstrapping keys.
    pub fn pbs_keys(&self) -> (FourierLweBootstrapKeyOwned, LweKeyswitchKeyOwned<u64>) {
        let mut seeder = random::seeder();
        let bsk = to_fourier(
            &self
                .seeded_bootstrap_key(self.preset.pbs, seeder.as_mut())
                .decompress_into_lwe_bootstrap_key(),
        );
        let ksk = self
            .seeded_keyswitch_key(seeder.as_mut())
            .decompress_into_lwe_keyswitch_key();
        (bsk, ksk)
    }

    /// A bootstrapping key (small key -> GLWE key) with the decomposition `decomp`.
    fn seeded_bootstrap_key(
        &self,
        decomp: crate::preset::DecompSection,
        seeder: &mut dyn Seeder,
    ) -> SeededLweBootstrapKeyOwned<u64> {
        par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
            &self.small_sk,
            &self.glwe_sk,
            decomp.base_log(),
            decomp.level(),
            self.preset.glwe.noise.distribution(),
            modulus(),
            seeder,
        )
    }

    /// The big-to-small keyswitching key.
    fn seeded_keyswitch_key(&self, seeder: &mut dyn Seeder) -> SeededLweKeyswitchKeyOwned<u64> {
        let p = &self.preset;
        allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &self.big_lwe_sk(),
            &self.small_sk,
            p.keyswitch.base_log(),
            p.keyswitch.level(),
            p.lwe.noise.distribution(),
            modulus(),
            seeder,
        )
    }

    /// The LWE -> GLWE packing keyswitching key.
    fn seeded_packing_keyswitch_key(
        &self,
        seeder: &mut dyn Seeder,
    ) -> SeededLwePackingKeyswitchKeyOwned<u64> {
        let p = &self.preset;
        allocate_and_generate_new_seeded_lwe_packing_keyswitch_key(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.packing_keyswitch.base_log(),
            p.packing_keyswitch.level(),
            p.glwe.noise.distribution(),
            modulus(),
            seeder,
        )
    }

    /// Circuit bootstrapping's private functional packing keyswitching keys (tfhe has no
    /// seeded form of them).
    fn cbs_packing_keys(&self) -> LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64> {
        let p = &self.preset;
        let mut enc = random::encryption_generator();
        par_allocate_and_generate_new_circuit_bootstrap_lwe_pfpksk_list(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.circuit_bootstrap.pfks().base_log(),
            p.circuit_bootstrap.pfks().level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        )
    }

    /// Serializes into a veilmoe envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        format::encode(ObjectKind::ClientKey, &self.preset, self.key_set, self)
    }

    /// Reads a client key. When `expected` is given, a key of another preset is refused; a key
    /// made with an insecure preset is refused unless `allow_insecure`.
    pub fn from_bytes(
        bytes: &[u8],
        expected: Option<&Preset>,
        allow_insecure: bool,
    ) -> Result<ClientKey> {
        let key: ClientKey =
            decode_self_describing(bytes, ObjectKind::ClientKey, expected, allow_insecure)?;
        let p = &key.preset;
        // Lengths first: tfhe derives the GLWE dimension by dividing by the polynomial size.
        if key.glwe_sk.polynomial_size() != p.polynomial_size()
            || key.glwe_sk.as_ref().len() != p.big_lwe_dimension().0
            || key.small_sk.as_ref().len() != p.lwe_dimension().0
        {
            return Err(EngineError::Format {
                what: "client key",
                reason: "key dimensions do not match its preset".into(),
            });
        }
        Ok(key)
    }
}

/// Decodes an envelope whose payload starts with its own preset (keys): the header's fingerprint
/// must match that preset, and the expected preset when one is given.
pub(super) fn decode_self_describing<T>(
    bytes: &[u8],
    kind: ObjectKind,
    expected: Option<&Preset>,
    allow_insecure: bool,
) -> Result<T>
where
    T: serde::de::DeserializeOwned + HasPreset,
{
    let (header, payload) = format::read_header(bytes)?;
    header.expect_kind(kind)?;
    if let Some(p) = expected {
        header.expect(kind, p.fingerprint(), &p.name, None)?;
    }
    let value: T = format::decode_payload(kind, payload)?;
    let preset = value.preset();
    preset.revalidate(kind.name())?;
    if preset.fingerprint() != header.preset {
        return Err(EngineError::Format {
            what: kind.name(),
            reason: "header and payload disagree on the preset".into(),
        });
    }
    if preset.insecure && !allow_insecure {
        return Err(EngineError::InsecurePreset(preset.name.clone()));
    }
    Ok(value)
}

pub(super) trait HasPreset {
    fn preset(&self) -> &Preset;
}
impl HasPreset for ClientKey {
    fn preset(&self) -> &Preset {
        &self.preset
    }
}
