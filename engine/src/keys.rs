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
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

/// The client's secret keys.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientKey {
    preset: Preset,
    key_set: KeySetId,
    pub(crate) small_sk: LweSecretKeyOwned<u64>,
    pub(crate) glwe_sk: GlweSecretKeyOwned<u64>,
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

/// The server's evaluation key (no secrets).
pub struct ServerKey {
    preset: Preset,
    key_set: KeySetId,
    pub(crate) bsk: FourierLweBootstrapKeyOwned,
    pub(crate) ksk: LweKeyswitchKeyOwned<u64>,
    pub(crate) pksk: LwePackingKeyswitchKeyOwned<u64>,
    pub(crate) cbs_bsk: FourierLweBootstrapKeyOwned,
    pub(crate) cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
    pub(crate) fft: Fft,
}

/// Serialized form of the server key (the Fft plan is rebuilt on load).
#[derive(Serialize, Deserialize)]
struct ServerKeyData {
    preset: Preset,
    bsk: FourierLweBootstrapKeyOwned,
    ksk: LweKeyswitchKeyOwned<u64>,
    pksk: LwePackingKeyswitchKeyOwned<u64>,
    cbs_bsk: FourierLweBootstrapKeyOwned,
    cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
}

/// The server key in seeded form: masks replaced by CSPRNG seeds, for storage and transfer.
/// The circuit-bootstrapping packing keys have no seeded form in tfhe and travel whole.
#[derive(Serialize, Deserialize)]
pub struct CompressedServerKey {
    preset: Preset,
    key_set: KeySetId,
    bsk: SeededLweBootstrapKeyOwned<u64>,
    ksk: SeededLweKeyswitchKeyOwned<u64>,
    pksk: SeededLwePackingKeyswitchKeyOwned<u64>,
    cbs_bsk: SeededLweBootstrapKeyOwned<u64>,
    cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
}

fn modulus() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
}

/// Converts a standard bootstrapping key to the Fourier domain (in parallel).
fn to_fourier(std_bsk: &LweBootstrapKeyOwned<u64>) -> FourierLweBootstrapKeyOwned {
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

    /// The big LWE key: the GLWE key flattened (k * N coefficients).
    pub(crate) fn big_lwe_sk(&self) -> LweSecretKey<&[u64]> {
        self.glwe_sk.as_lwe_secret_key()
    }

    /// Generates the full (uncompressed) server key. Uses all rayon threads.
    pub fn server_key(&self) -> ServerKey {
        self.server_key_with_progress(&mut |_, _| {})
    }

    /// As [`ClientKey::server_key`], calling `progress(done, total)` between the key parts.
    pub fn server_key_with_progress(&self, progress: &mut dyn FnMut(usize, usize)) -> ServerKey {
        let p = &self.preset;
        let mut enc = random::encryption_generator();
        progress(0, 5);
        let bsk = to_fourier(&par_allocate_and_generate_new_lwe_bootstrap_key(
            &self.small_sk,
            &self.glwe_sk,
            p.pbs.base_log(),
            p.pbs.level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        ));
        progress(1, 5);
        let ksk = allocate_and_generate_new_lwe_keyswitch_key(
            &self.big_lwe_sk(),
            &self.small_sk,
            p.keyswitch.base_log(),
            p.keyswitch.level(),
            p.lwe.noise.distribution(),
            modulus(),
            &mut enc,
        );
        progress(2, 5);
        let pksk = allocate_and_generate_new_lwe_packing_keyswitch_key(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.packing_keyswitch.base_log(),
            p.packing_keyswitch.level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        );
        progress(3, 5);
        let cbs_bsk = to_fourier(&par_allocate_and_generate_new_lwe_bootstrap_key(
            &self.small_sk,
            &self.glwe_sk,
            p.circuit_bootstrap.pbs().base_log(),
            p.circuit_bootstrap.pbs().level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        ));
        progress(4, 5);
        let cbs_pfpksk = par_allocate_and_generate_new_circuit_bootstrap_lwe_pfpksk_list(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.circuit_bootstrap.pfks().base_log(),
            p.circuit_bootstrap.pfks().level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        );
        progress(5, 5);
        ServerKey::assemble(p.clone(), self.key_set, bsk, ksk, pksk, cbs_bsk, cbs_pfpksk)
    }

    /// Generates the server key in seeded (compressed) form.
    pub fn compressed_server_key(&self) -> CompressedServerKey {
        let p = &self.preset;
        let mut seeder = random::seeder();
        let bsk = par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
            &self.small_sk,
            &self.glwe_sk,
            p.pbs.base_log(),
            p.pbs.level(),
            p.glwe.noise.distribution(),
            modulus(),
            seeder.as_mut(),
        );
        let ksk = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &self.big_lwe_sk(),
            &self.small_sk,
            p.keyswitch.base_log(),
            p.keyswitch.level(),
            p.lwe.noise.distribution(),
            modulus(),
            seeder.as_mut(),
        );
        let pksk = allocate_and_generate_new_seeded_lwe_packing_keyswitch_key(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.packing_keyswitch.base_log(),
            p.packing_keyswitch.level(),
            p.glwe.noise.distribution(),
            modulus(),
            seeder.as_mut(),
        );
        let cbs_bsk = par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
            &self.small_sk,
            &self.glwe_sk,
            p.circuit_bootstrap.pbs().base_log(),
            p.circuit_bootstrap.pbs().level(),
            p.glwe.noise.distribution(),
            modulus(),
            seeder.as_mut(),
        );
        let mut enc = random::encryption_generator();
        let cbs_pfpksk = par_allocate_and_generate_new_circuit_bootstrap_lwe_pfpksk_list(
            &self.big_lwe_sk(),
            &self.glwe_sk,
            p.circuit_bootstrap.pfks().base_log(),
            p.circuit_bootstrap.pfks().level(),
            p.glwe.noise.distribution(),
            modulus(),
            &mut enc,
        );
        CompressedServerKey {
            preset: p.clone(),
            key_set: self.key_set,
            bsk,
            ksk,
            pksk,
            cbs_bsk,
            cbs_pfpksk,
        }
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
        if key.small_sk.lwe_dimension() != p.lwe_dimension()
            || key.glwe_sk.glwe_dimension() != p.glwe_dimension()
            || key.glwe_sk.polynomial_size() != p.polynomial_size()
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
fn decode_self_describing<T>(
    bytes: &[u8],
    kind: ObjectKind,
    expected: Option<&Preset>,
    allow_insecure: bool,
) -> Result<T>
where
    T: serde::de::DeserializeOwned + HasPreset,
{
    let (header, payload) = format::read_header(bytes)?;
    format::check_payload(&header, payload, header.kind)?;
    if header.kind != kind {
        return Err(EngineError::Format {
            what: kind.name(),
            reason: format!(
                "this file holds a {}, not a {}",
                header.kind.name(),
                kind.name()
            ),
        });
    }
    if let Some(p) = expected {
        header.expect(kind, p, None)?;
    }
    let value: T = bincode::deserialize(payload).map_err(|e| EngineError::Format {
        what: kind.name(),
        reason: format!("payload does not decode: {e}"),
    })?;
    let preset = value.preset();
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

trait HasPreset {
    fn preset(&self) -> &Preset;
}
impl HasPreset for ClientKey {
    fn preset(&self) -> &Preset {
        &self.preset
    }
}
impl HasPreset for ServerKeyData {
    fn preset(&self) -> &Preset {
        &self.preset
    }
}
impl HasPreset for CompressedServerKey {
    fn preset(&self) -> &Preset {
        &self.preset
    }
}

impl ServerKey {
    fn assemble(
        preset: Preset,
        key_set: KeySetId,
        bsk: FourierLweBootstrapKeyOwned,
        ksk: LweKeyswitchKeyOwned<u64>,
        pksk: LwePackingKeyswitchKeyOwned<u64>,
        cbs_bsk: FourierLweBootstrapKeyOwned,
        cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
    ) -> ServerKey {
        let fft = Fft::new(preset.polynomial_size());
        ServerKey {
            preset,
            key_set,
            bsk,
            ksk,
            pksk,
            cbs_bsk,
            cbs_pfpksk,
            fft,
        }
    }

    pub fn preset(&self) -> &Preset {
        &self.preset
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }

    /// Checks that the key's shapes are those of its preset (a file could be crafted otherwise).
    fn validate(&self) -> Result<()> {
        let p = &self.preset;
        let ok = self.bsk.input_lwe_dimension() == p.lwe_dimension()
            && self.bsk.polynomial_size() == p.polynomial_size()
            && self.bsk.glwe_size() == p.glwe_dimension().to_glwe_size()
            && self.bsk.decomposition_level_count() == p.pbs.level()
            && self.bsk.decomposition_base_log() == p.pbs.base_log()
            && self.ksk.input_key_lwe_dimension() == p.big_lwe_dimension()
            && self.ksk.output_key_lwe_dimension() == p.lwe_dimension()
            && self.pksk.input_key_lwe_dimension() == p.big_lwe_dimension()
            && self.pksk.output_polynomial_size() == p.polynomial_size()
            && self.cbs_bsk.input_lwe_dimension() == p.lwe_dimension()
            && self.cbs_bsk.polynomial_size() == p.polynomial_size()
            && self.cbs_bsk.decomposition_level_count() == p.circuit_bootstrap.pbs().level()
            && self.cbs_pfpksk.input_key_lwe_dimension() == p.big_lwe_dimension()
            && self.cbs_pfpksk.output_polynomial_size() == p.polynomial_size()
            && self.cbs_pfpksk.lwe_pfpksk_count().0 == p.glwe_dimension().to_glwe_size().0;
        if ok {
            Ok(())
        } else {
            Err(EngineError::Format {
                what: "server key",
                reason: "key dimensions do not match its preset".into(),
            })
        }
    }

    /// Serializes into a veilmoe envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Ref<'a> {
            preset: &'a Preset,
            bsk: &'a FourierLweBootstrapKeyOwned,
            ksk: &'a LweKeyswitchKeyOwned<u64>,
            pksk: &'a LwePackingKeyswitchKeyOwned<u64>,
            cbs_bsk: &'a FourierLweBootstrapKeyOwned,
            cbs_pfpksk: &'a LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
        }
        format::encode(
            ObjectKind::ServerKey,
            &self.preset,
            self.key_set,
            &Ref {
                preset: &self.preset,
                bsk: &self.bsk,
                ksk: &self.ksk,
                pksk: &self.pksk,
                cbs_bsk: &self.cbs_bsk,
                cbs_pfpksk: &self.cbs_pfpksk,
            },
        )
    }

    /// Reads a server key, full or compressed (decompressed on the fly).
    pub fn from_bytes(
        bytes: &[u8],
        expected: Option<&Preset>,
        allow_insecure: bool,
    ) -> Result<ServerKey> {
        let (header, _) = format::read_header(bytes)?;
        let key = match header.kind {
            ObjectKind::CompressedServerKey => {
                let c: CompressedServerKey = decode_self_describing(
                    bytes,
                    ObjectKind::CompressedServerKey,
                    expected,
                    allow_insecure,
                )?;
                c.decompress_unchecked(header.key_set)
            }
            _ => {
                let d: ServerKeyData =
                    decode_self_describing(bytes, ObjectKind::ServerKey, expected, allow_insecure)?;
                ServerKey::assemble(
                    d.preset,
                    header.key_set,
                    d.bsk,
                    d.ksk,
                    d.pksk,
                    d.cbs_bsk,
                    d.cbs_pfpksk,
                )
            }
        };
        key.validate()?;
        Ok(key)
    }

    /// The Fourier bootstrapping key (public material; for baselines and benchmarks).
    pub fn bootstrap_key(&self) -> &FourierLweBootstrapKeyOwned {
        &self.bsk
    }

    /// The big-to-small keyswitching key (public material).
    pub fn keyswitch_key(&self) -> &LweKeyswitchKeyOwned<u64> {
        &self.ksk
    }

    /// Bytes of the key material held in memory (Fourier BSK, KSK, packing keys).
    pub fn size_bytes(&self) -> usize {
        (self.bsk.as_view().data().len() + self.cbs_bsk.as_view().data().len())
            * std::mem::size_of::<c64>()
            + std::mem::size_of_val(self.ksk.as_ref())
            + std::mem::size_of_val(self.pksk.as_ref())
            + std::mem::size_of_val(self.cbs_pfpksk.as_ref())
    }
}

impl CompressedServerKey {
    pub fn preset(&self) -> &Preset {
        &self.preset
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }

    /// Expands the seeds into the full server key.
    pub fn decompress(self) -> ServerKey {
        let ks = self.key_set;
        self.decompress_unchecked(ks)
    }

    fn decompress_unchecked(self, key_set: KeySetId) -> ServerKey {
        let bsk = to_fourier(&self.bsk.decompress_into_lwe_bootstrap_key());
        let cbs_bsk = to_fourier(&self.cbs_bsk.decompress_into_lwe_bootstrap_key());
        let ksk = self.ksk.decompress_into_lwe_keyswitch_key();
        let pksk = self.pksk.decompress_into_lwe_packing_keyswitch_key();
        ServerKey::assemble(
            self.preset,
            key_set,
            bsk,
            ksk,
            pksk,
            cbs_bsk,
            self.cbs_pfpksk,
        )
    }

    /// Serializes into a veilmoe envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        format::encode(
            ObjectKind::CompressedServerKey,
            &self.preset,
            self.key_set,
            self,
        )
    }
}
