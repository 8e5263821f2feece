//! Client-side encryption and decryption of integer vectors (the server never sees these keys).

use crate::ciphertext::{LweKeyKind, LweVector, PackedGlwe, SeededPackedGlwe};
use crate::encoding::{Encoding, FixedPoint, ValueRange};
use crate::error::{EngineError, Result};
use crate::keys::ClientKey;
use crate::random;
use tfhe::core_crypto::prelude::*;

fn modulus() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
}

impl ClientKey {
    fn encode_all(values: &[i64], encoding: Encoding) -> Result<Vec<u64>> {
        encoding.validate()?;
        values.iter().map(|&v| encoding.encode(v)).collect()
    }

    /// Encrypts each value as its own LWE ciphertext under the big key.
    pub fn encrypt_lwe(&self, values: &[i64], encoding: Encoding) -> Result<LweVector> {
        let encoded = Self::encode_all(values, encoding)?;
        let sk = self.big_lwe_sk();
        let mut list = LweCiphertextList::new(
            0u64,
            sk.lwe_dimension().to_lwe_size(),
            LweCiphertextCount(values.len()),
            modulus(),
        );
        let plaintexts = PlaintextList::from_container(encoded);
        let mut gen = random::encryption_generator();
        encrypt_lwe_ciphertext_list(
            &sk,
            &mut list,
            &plaintexts,
            self.preset().glwe.noise.distribution(),
            &mut gen,
        );
        Ok(LweVector::new(
            self.key_set(),
            LweKeyKind::Big,
            encoding,
            ValueRange::of(encoding),
            self.preset().glwe.noise.variance(),
            list,
        ))
    }

    /// Encrypts bits (each 0 or 1) as LWE ciphertexts whose public range is `[0, 1]`, the
    /// input a circuit bootstrap accepts.
    pub fn encrypt_bits(&self, bits: &[i64], encoding: Encoding) -> Result<LweVector> {
        if let Some(v) = bits.iter().find(|v| !(0..=1).contains(*v)) {
            return Err(EngineError::range(
                "encrypt_bits",
                format!("{v} is not a bit"),
            ));
        }
        self.encrypt_lwe(bits, encoding)?
            .with_range(ValueRange { min: 0, max: 1 })
    }

    fn packed_plaintexts(
        &self,
        values: &[i64],
        encoding: Encoding,
    ) -> Result<(usize, PlaintextListOwned<u64>)> {
        let n = self.preset().glwe.polynomial_size;
        let mut encoded = Self::encode_all(values, encoding)?;
        let glwes = values.len().div_ceil(n).max(1);
        encoded.resize(glwes * n, 0);
        Ok((glwes, PlaintextList::from_container(encoded)))
    }

    /// Encrypts `values` packed N per GLWE ciphertext (coefficient encoding).
    pub fn encrypt_packed(&self, values: &[i64], encoding: Encoding) -> Result<PackedGlwe> {
        let (glwes, plaintexts) = self.packed_plaintexts(values, encoding)?;
        let p = self.preset();
        let mut list = GlweCiphertextList::new(
            0u64,
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            GlweCiphertextCount(glwes),
            modulus(),
        );
        let mut gen = random::encryption_generator();
        encrypt_glwe_ciphertext_list(
            &self.glwe_sk,
            &mut list,
            &plaintexts,
            p.glwe.noise.distribution(),
            &mut gen,
        );
        Ok(PackedGlwe {
            key_set: self.key_set(),
            encoding,
            range: ValueRange::of(encoding),
            variance: p.glwe.noise.variance(),
            len: values.len(),
            list,
        })
    }

    /// Encrypts `values` packed, in seeded form (about half the bytes of [`Self::encrypt_packed`]).
    pub fn encrypt_packed_seeded(
        &self,
        values: &[i64],
        encoding: Encoding,
    ) -> Result<SeededPackedGlwe> {
        let (glwes, plaintexts) = self.packed_plaintexts(values, encoding)?;
        let p = self.preset();
        let mut seeder = random::seeder();
        let mut list = SeededGlweCiphertextList::new(
            0u64,
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            GlweCiphertextCount(glwes),
            seeder.seed().into(),
            modulus(),
        );
        encrypt_seeded_glwe_ciphertext_list(
            &self.glwe_sk,
            &mut list,
            &plaintexts,
            p.glwe.noise.distribution(),
            seeder.as_mut(),
        );
        Ok(SeededPackedGlwe {
            key_set: self.key_set(),
            encoding,
            range: ValueRange::of(encoding),
            variance: p.glwe.noise.variance(),
            len: values.len(),
            list,
        })
    }

    /// Quantizes and encrypts real values, packed.
    pub fn encrypt_fixed_packed(&self, values: &[f64], fp: &FixedPoint) -> Result<PackedGlwe> {
        let q: Vec<i64> = values.iter().map(|&x| fp.quantize(x)).collect();
        self.encrypt_packed(&q, fp.encoding)
    }

    fn check_key_set(&self, found: crate::format::KeySetId) -> Result<()> {
        if found != self.key_set() {
            return Err(EngineError::KeySetMismatch {
                what: "ciphertext",
                expected: self.key_set().to_string(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    /// Raw phases (message plus noise on the 2^64 torus) of an LWE vector; for noise studies.
    pub fn decrypt_lwe_phases(&self, ct: &LweVector) -> Result<Vec<u64>> {
        self.check_key_set(ct.key_set())?;
        let mut out = PlaintextList::new(0u64, PlaintextCount(ct.len()));
        match ct.key_kind() {
            LweKeyKind::Big => {
                decrypt_lwe_ciphertext_list(&self.big_lwe_sk(), ct.as_list(), &mut out)
            }
            LweKeyKind::Small => {
                decrypt_lwe_ciphertext_list(&self.small_sk, ct.as_list(), &mut out)
            }
        }
        Ok(out.into_container())
    }

    /// Decrypts and decodes an LWE vector.
    pub fn decrypt_lwe(&self, ct: &LweVector) -> Result<Vec<i64>> {
        let enc = ct.encoding();
        Ok(self
            .decrypt_lwe_phases(ct)?
            .into_iter()
            .map(|p| enc.decode(p))
            .collect())
    }

    /// Raw phases of a packed vector (`len` values).
    pub fn decrypt_packed_phases(&self, ct: &PackedGlwe) -> Result<Vec<u64>> {
        self.check_key_set(ct.key_set())?;
        let n = self.preset().glwe.polynomial_size;
        let mut out = PlaintextList::new(0u64, PlaintextCount(ct.glwe_count() * n));
        decrypt_glwe_ciphertext_list(&self.glwe_sk, ct.as_list(), &mut out);
        let mut v = out.into_container();
        v.truncate(ct.len());
        Ok(v)
    }

    /// Decrypts and decodes a packed vector.
    pub fn decrypt_packed(&self, ct: &PackedGlwe) -> Result<Vec<i64>> {
        let enc = ct.encoding();
        Ok(self
            .decrypt_packed_phases(ct)?
            .into_iter()
            .map(|p| enc.decode(p))
            .collect())
    }
}
