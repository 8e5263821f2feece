//! The server's evaluation key, full and seeded, its validation against the preset and its file.

use crate::error::{EngineError, Result};
use crate::format::{self, KeySetId, ObjectKind};
use crate::preset::Preset;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

use super::{decode_self_describing, to_fourier, HasPreset};

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
    pub(super) preset: Preset,
    pub(super) key_set: KeySetId,
    pub(super) bsk: SeededLweBootstrapKeyOwned<u64>,
    pub(super) ksk: SeededLweKeyswitchKeyOwned<u64>,
    pub(super) pksk: SeededLwePackingKeyswitchKeyOwned<u64>,
    pub(super) cbs_bsk: SeededLweBootstrapKeyOwned<u64>,
    pub(super) cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
}

impl ServerKey {
    pub(super) fn assemble(
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
            && self.cbs_pfpksk.lwe_pfpksk_count().0 == p.glwe_dimension().to_glwe_size().0
            && self.cbs_bsk.decomposition_base_log() == p.circuit_bootstrap.pbs().base_log()
            && self.ksk.decomposition_base_log() == p.keyswitch.base_log()
            && self.ksk.decomposition_level_count() == p.keyswitch.level()
            && self.pksk.decomposition_base_log() == p.packing_keyswitch.base_log()
            && self.pksk.decomposition_level_count() == p.packing_keyswitch.level()
            && self.pksk.output_glwe_size() == p.glwe_dimension().to_glwe_size()
            && self.cbs_pfpksk.decomposition_base_log() == p.circuit_bootstrap.pfks().base_log()
            && self.cbs_pfpksk.decomposition_level_count() == p.circuit_bootstrap.pfks().level()
            && self.cbs_pfpksk.output_glwe_size() == p.glwe_dimension().to_glwe_size()
            && self.ksk.ciphertext_modulus().is_native_modulus()
            && self.pksk.ciphertext_modulus().is_native_modulus()
            && self.cbs_pfpksk.ciphertext_modulus().is_native_modulus()
            && self.ksk.as_ref().len()
                == p.big_lwe_dimension().0 * p.keyswitch.level * p.lwe_dimension().to_lwe_size().0
            && self.bsk.as_view().data().len()
                == p.lwe_dimension().0
                    * (p.glwe.dimension + 1)
                    * (p.glwe.dimension + 1)
                    * p.pbs.level
                    * (p.glwe.polynomial_size / 2);
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
