//! The server's evaluation key, in memory (Fourier domain) and in its file (seeded form).
//!
//! A server key file holds only the seeded form: its coefficients are plain integer vectors
//! whose decoding is bounded by the payload's length, and every dimension is checked against
//! the preset before anything is allocated from it (expansion of the seeds, conversion to the
//! Fourier domain). The Fourier form is never decoded from a file: tfhe's Fourier deserializer
//! allocates from sizes in the file before they could be checked.

use crate::error::{EngineError, Result};
use crate::format::{self, KeySetId, ObjectKind};
use crate::preset::Preset;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

use super::{decode_self_describing, to_fourier, HasPreset};
use crate::packing::FourierPackingKey;

/// The server's evaluation key (no secrets).
pub struct ServerKey {
    preset: Preset,
    key_set: KeySetId,
    pub(crate) bsk: FourierLweBootstrapKeyOwned,
    pub(crate) ksk: LweKeyswitchKeyOwned<u64>,
    /// The packing keyswitching key, Fourier domain ([`crate::packing`]).
    pub(crate) pksk: FourierPackingKey,
    pub(crate) cbs_bsk: FourierLweBootstrapKeyOwned,
    pub(crate) cbs_pfpksk: LwePrivateFunctionalPackingKeyswitchKeyListOwned<u64>,
    pub(crate) fft: Fft,
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
        let pksk = FourierPackingKey::new(&pksk, fft.as_view());
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
            && self.pksk.shape()
                == (
                    p.big_lwe_dimension().0,
                    p.packing_keyswitch.base_log,
                    p.packing_keyswitch.level,
                    p.glwe_dimension().to_glwe_size().0,
                    p.glwe.polynomial_size,
                )
            && self.cbs_bsk.input_lwe_dimension() == p.lwe_dimension()
            && self.cbs_bsk.polynomial_size() == p.polynomial_size()
            && self.cbs_bsk.decomposition_level_count() == p.circuit_bootstrap.pbs().level()
            && self.cbs_pfpksk.input_key_lwe_dimension() == p.big_lwe_dimension()
            && self.cbs_pfpksk.output_polynomial_size() == p.polynomial_size()
            && self.cbs_pfpksk.lwe_pfpksk_count().0 == p.glwe_dimension().to_glwe_size().0
            && self.cbs_bsk.decomposition_base_log() == p.circuit_bootstrap.pbs().base_log()
            && self.ksk.decomposition_base_log() == p.keyswitch.base_log()
            && self.ksk.decomposition_level_count() == p.keyswitch.level()
            && self.cbs_pfpksk.decomposition_base_log() == p.circuit_bootstrap.pfks().base_log()
            && self.cbs_pfpksk.decomposition_level_count() == p.circuit_bootstrap.pfks().level()
            && self.cbs_pfpksk.output_glwe_size() == p.glwe_dimension().to_glwe_size()
            && self.ksk.ciphertext_modulus().is_native_modulus()
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

    /// Reads a server key file: [`CompressedServerKey::from_bytes`] (every dimension checked
    /// against the preset), then the seeds are expanded.
    pub fn from_bytes(
        bytes: &[u8],
        expected: Option<&Preset>,
        allow_insecure: bool,
    ) -> Result<ServerKey> {
        let key = CompressedServerKey::from_bytes(bytes, expected, allow_insecure)?.decompress();
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
            + self.pksk.size_bytes()
            + std::mem::size_of_val(self.cbs_pfpksk.as_ref())
    }
}

impl CompressedServerKey {
    /// Reads a server key file (the seeded form, see [`CompressedServerKey::to_bytes`]): the
    /// preset inside is revalidated and every dimension of every key part is checked against
    /// it, so nothing sized by the file is allocated beyond its own length.
    pub fn from_bytes(
        bytes: &[u8],
        expected: Option<&Preset>,
        allow_insecure: bool,
    ) -> Result<CompressedServerKey> {
        let (header, _) = format::read_header(bytes)?;
        if header.kind == ObjectKind::ServerKey {
            return Err(EngineError::Format {
                what: "server key",
                reason: "a full-form (Fourier) server key file is not read: its decoder would \
                         allocate from sizes in the file before they can be checked; write the \
                         key with this version's `veilmoe keygen` (seeded form)"
                    .into(),
            });
        }
        let c: CompressedServerKey = decode_self_describing(
            bytes,
            ObjectKind::CompressedServerKey,
            expected,
            allow_insecure,
        )?;
        if c.key_set != header.key_set {
            return Err(EngineError::Format {
                what: "server key",
                reason: "header and payload disagree on the key set".into(),
            });
        }
        c.validate()?;
        Ok(c)
    }

    pub fn preset(&self) -> &Preset {
        &self.preset
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }

    /// Checks every part's dimensions, decomposition, modulus and data length against the
    /// key's preset, without allocating: what [`CompressedServerKey::decompress`] allocates
    /// follows from these dimensions.
    pub fn validate(&self) -> Result<()> {
        let p = &self.preset;
        let (n, big, glwe, poly) = (
            p.lwe_dimension(),
            p.big_lwe_dimension(),
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
        );
        let bsk_ok = |b: &SeededLweBootstrapKeyOwned<u64>, d: crate::preset::DecompSection| {
            crate::ciphertext::is_plain_seed(&b.compression_seed())
                && b.input_lwe_dimension() == n
                && b.glwe_size() == glwe
                && b.polynomial_size() == poly
                && b.decomposition_base_log() == d.base_log()
                && b.decomposition_level_count() == d.level()
                && b.ciphertext_modulus().is_native_modulus()
                && b.as_ref().len() == n.0 * d.level * glwe.0 * poly.0
        };
        let checks = [
            ("bootstrapping key", bsk_ok(&self.bsk, p.pbs)),
            (
                "circuit-bootstrapping key",
                bsk_ok(&self.cbs_bsk, p.circuit_bootstrap.pbs()),
            ),
            (
                "keyswitching key",
                crate::ciphertext::is_plain_seed(&self.ksk.compression_seed())
                    && self.ksk.input_key_lwe_dimension() == big
                    && self.ksk.output_key_lwe_dimension() == n
                    && self.ksk.decomposition_base_log() == p.keyswitch.base_log()
                    && self.ksk.decomposition_level_count() == p.keyswitch.level()
                    && self.ksk.ciphertext_modulus().is_native_modulus()
                    && self.ksk.as_ref().len() == big.0 * p.keyswitch.level,
            ),
            (
                "packing keyswitching key",
                crate::ciphertext::is_plain_seed(&self.pksk.compression_seed())
                    && self.pksk.input_key_lwe_dimension() == big
                    && self.pksk.output_glwe_size() == glwe
                    && self.pksk.output_polynomial_size() == poly
                    && self.pksk.decomposition_base_log() == p.packing_keyswitch.base_log()
                    && self.pksk.decomposition_level_count() == p.packing_keyswitch.level()
                    && self.pksk.ciphertext_modulus().is_native_modulus()
                    && self.pksk.as_ref().len() == big.0 * p.packing_keyswitch.level * poly.0,
            ),
            (
                "circuit-bootstrapping packing keys",
                self.cbs_pfpksk.input_key_lwe_dimension() == big
                    && self.cbs_pfpksk.output_glwe_size() == glwe
                    && self.cbs_pfpksk.output_polynomial_size() == poly
                    && self.cbs_pfpksk.decomposition_base_log()
                        == p.circuit_bootstrap.pfks().base_log()
                    && self.cbs_pfpksk.decomposition_level_count()
                        == p.circuit_bootstrap.pfks().level()
                    && self.cbs_pfpksk.ciphertext_modulus().is_native_modulus()
                    && self.cbs_pfpksk.as_ref().len()
                        == glwe.0 * (big.0 + 1) * p.circuit_bootstrap.pfks_level * glwe.0 * poly.0,
            ),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            None => Ok(()),
            Some((part, _)) => Err(EngineError::Format {
                what: "server key",
                reason: format!("its {part} does not have the shape of preset `{}`", p.name),
            }),
        }
    }

    /// Expands the seeds into the full server key (dimensions as checked by
    /// [`CompressedServerKey::validate`]; a key made by [`super::ClientKey`] always passes).
    pub fn decompress(self) -> ServerKey {
        let key_set = self.key_set;
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

impl HasPreset for CompressedServerKey {
    fn preset(&self) -> &Preset {
        &self.preset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClientKey;

    #[test]
    fn a_part_of_the_wrong_shape_is_refused_before_expansion() {
        let preset = Preset::load("test", true).unwrap();
        let client = ClientKey::generate(&preset);
        let good = client.compressed_server_key();
        assert!(good.validate().is_ok());
        // A bootstrapping key claiming a polynomial size of 2^20 (what a crafted file could
        // say to make expansion allocate): the check refuses it from the dimensions alone.
        let mut bad = client.compressed_server_key();
        bad.bsk = SeededLweBootstrapKey::from_container(
            vec![0u64; 2 << 20],
            GlweSize(2),
            PolynomialSize(1 << 20),
            DecompositionBaseLog(1),
            DecompositionLevelCount(1),
            good.bsk.compression_seed(),
            CiphertextModulus::new_native(),
        );
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("bootstrapping key"), "{err}");
        // A keyswitching key claiming another output dimension than the preset's.
        let mut bad = client.compressed_server_key();
        bad.ksk = SeededLweKeyswitchKey::from_container(
            bad.ksk.as_ref().to_vec(),
            bad.ksk.decomposition_base_log(),
            bad.ksk.decomposition_level_count(),
            LweSize(bad.ksk.output_key_lwe_dimension().0 + 7),
            bad.ksk.compression_seed(),
            CiphertextModulus::new_native(),
        );
        assert!(bad.validate().is_err());
    }
}
