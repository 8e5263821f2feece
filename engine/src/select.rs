//! Oblivious selection building blocks: the GGSW-encrypted bit (made by circuit bootstrapping,
//! [`crate::cbs`]), external products, CMUX and CMUX trees.
//!
//! A CMUX costs one external product (~0.1 ms), against ~40 ms for a PBS, so once the index bits
//! of a choice are GGSW ciphertexts (one circuit bootstrap each: one blind rotation under the
//! circuit-bootstrapping key and L (k+1) packing keyswitches, see [`crate::cbs`]), choosing among E
//! encrypted candidates costs E - 1 CMUX per GLWE: the work that scales with E stays leveled.
//!
//! [`Evaluator::cmux_tree_lwe`] selects among LWE vectors: each LWE ciphertext is embedded as the
//! constant coefficient of a GLWE (the inverse of sample extraction; the other coefficients of
//! the phase are junk that the CMUX carries along harmlessly), selected, and extracted again.

use crate::accounting::OpKind;
use crate::ciphertext::{LweKeyKind, LweVector, PackedGlwe};
use crate::error::{EngineError, Result};
use crate::evaluator::{with_scratch, Evaluator};
use crate::format::KeySetId;
use crate::noise;
use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

/// An encrypted bit as a Fourier-domain GGSW ciphertext (the control input of a CMUX).
pub struct GgswBit {
    pub(crate) key_set: KeySetId,
    pub(crate) ggsw: FourierGgswCiphertext<aligned_vec::ABox<[c64]>>,
    pub(crate) variance: f64,
}

impl GgswBit {
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }

    /// The model's variance bound of the GGSW's noise (unit torus), which every external
    /// product with this bit multiplies by its decomposition.
    pub fn variance(&self) -> f64 {
        self.variance
    }
}

impl<'k> Evaluator<'k> {
    /// Runs `op(out, input, fft, stack)` on each GLWE pair of `out` and `input`, in parallel,
    /// with per-thread scratch of `req` bytes.
    fn zip_glwes(
        &self,
        out: &mut PackedGlwe,
        input: &PackedGlwe,
        req: usize,
        op: impl Fn(&mut GlweCiphertext<&mut [u64]>, GlweCiphertext<&[u64]>, FftView<'_>, &mut PodStack)
            + Sync,
    ) {
        let p = self.preset();
        let fft = self.key().fft.as_view();
        let glwe_len = p.glwe_dimension().to_glwe_size().0 * p.glwe.polynomial_size;
        let modulus = CiphertextModulus::new_native();
        out.list
            .as_mut()
            .par_chunks_mut(glwe_len)
            .zip(input.list.as_ref().par_chunks(glwe_len))
            .for_each(|(o, i)| {
                let mut acc = GlweCiphertext::from_container(o, p.polynomial_size(), modulus);
                let input = GlweCiphertext::from_container(i, p.polynomial_size(), modulus);
                with_scratch(req, |stack| op(&mut acc, input, fft, stack));
            });
        self.ops.record(
            OpKind::ExternalProduct,
            input.glwe_count() as u64,
            p.glwe.polynomial_size as u64,
        );
    }

    /// The external product `bit * c` (GGSW x GLWE): `c` if the bit is 1, zero if it is 0.
    pub fn external_product(&self, bit: &GgswBit, c: &PackedGlwe) -> Result<PackedGlwe> {
        self.check_key_set(bit.key_set)?;
        self.check_key_set(c.key_set())?;
        let p = self.preset();
        let req = add_external_product_assign_mem_optimized_requirement::<u64>(
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            self.key().fft.as_view(),
        )
        .unaligned_bytes_required();
        let mut out = c.clone();
        self.zip_glwes(&mut out, c, req, |acc, input, fft, stack| {
            acc.as_mut().fill(0);
            add_external_product_assign_mem_optimized(acc, &bit.ggsw, &input, fft, stack);
        });
        out.variance = c.variance() + noise::external_product_variance(p, bit.variance);
        out.range = c
            .range()
            .union(&crate::encoding::ValueRange { min: 0, max: 0 });
        Ok(out)
    }

    /// `c0` if the bit is 0, `c1` if it is 1 (one external product per GLWE).
    pub fn cmux(&self, bit: &GgswBit, c0: &PackedGlwe, c1: &PackedGlwe) -> Result<PackedGlwe> {
        self.check_key_set(bit.key_set)?;
        self.check_key_set(c0.key_set())?;
        c0.check_compatible(c1, "CMUX")?;
        let p = self.preset();
        let req = cmux_assign_mem_optimized_requirement::<u64>(
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            self.key().fft.as_view(),
        )
        .unaligned_bytes_required();
        let mut out = c0.clone();
        self.zip_glwes(&mut out, c1, req, |acc, input, fft, stack| {
            let mut ct1 = GlweCiphertext::from_container(
                input.as_ref().to_vec(),
                input.polynomial_size(),
                input.ciphertext_modulus(),
            );
            cmux_assign_mem_optimized(acc, &mut ct1, &bit.ggsw, fft, stack);
        });
        out.variance =
            c0.variance().max(c1.variance()) + noise::external_product_variance(p, bit.variance);
        Ok(out)
    }

    /// Selects `inputs[index]` where `index = sum_l bit_l 2^l` (`index_bits` least significant
    /// first). Missing leaves (when `inputs.len() < 2^bits`) are encryptions of zero; always
    /// `2^bits - 1` CMUX levels' worth of work, whatever the index.
    pub fn cmux_tree(&self, index_bits: &[GgswBit], inputs: &[PackedGlwe]) -> Result<PackedGlwe> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::shape("CMUX tree", "at least one input", 0))?;
        if inputs.len() > (1usize << index_bits.len()) {
            return Err(EngineError::shape(
                "CMUX tree",
                format!(
                    "at most {} inputs for {} index bits",
                    1usize << index_bits.len(),
                    index_bits.len()
                ),
                inputs.len(),
            ));
        }
        for x in inputs {
            first.check_compatible(x, "CMUX tree")?;
        }
        let mut range = crate::encoding::ValueRange { min: 0, max: 0 };
        for x in inputs {
            range = range.union(&x.range());
        }
        let zero = PackedGlwe {
            list: GlweCiphertextList::new(
                0u64,
                first.list.glwe_size(),
                first.list.polynomial_size(),
                first.list.glwe_ciphertext_count(),
                CiphertextModulus::new_native(),
            ),
            variance: 0.0,
            ..first.clone()
        };
        let mut level: Vec<PackedGlwe> = (0..(1usize << index_bits.len()))
            .map(|i| inputs.get(i).cloned().unwrap_or_else(|| zero.clone()))
            .collect();
        for bit in index_bits {
            level = level
                .par_chunks(2)
                .map(|pair| self.cmux(bit, &pair[0], &pair[1]))
                .collect::<Result<Vec<_>>>()?;
        }
        let mut out = level.remove(0);
        out.range = range;
        Ok(out)
    }

    /// Selects `inputs[index]` among LWE vectors of equal length (see the module docs).
    pub fn cmux_tree_lwe(&self, index_bits: &[GgswBit], inputs: &[LweVector]) -> Result<LweVector> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::shape("CMUX tree", "at least one input", 0))?;
        self.check_big_input(first, "CMUX tree")?;
        for x in inputs {
            first.check_compatible(x, "CMUX tree")?;
            if x.len() != first.len() {
                return Err(EngineError::shape(
                    "CMUX tree",
                    format!("{} values", first.len()),
                    x.len(),
                ));
            }
        }
        let embedded: Vec<PackedGlwe> = inputs.iter().map(|x| self.embed_lwe(x)).collect();
        let selected = self.cmux_tree(index_bits, &embedded)?;
        Ok(self.extract_constants(&selected))
    }

    /// `bit * x` for every value of an LWE vector (one external product each): the value if the
    /// bit is 1, zero if it is 0. Exact for any width, so a wide accumulator can be scaled by
    /// the bits of an encrypted gate without a PBS.
    pub fn external_product_lwe(&self, bit: &GgswBit, x: &LweVector) -> Result<LweVector> {
        self.check_big_input(x, "external product")?;
        let product = self.external_product(bit, &self.embed_lwe(x))?;
        Ok(self.extract_constants(&product))
    }

    /// Sample-extracts the constant coefficient of every GLWE (inverse of `embed_lwe`).
    fn extract_constants(&self, glwes: &PackedGlwe) -> LweVector {
        let p = self.preset();
        let lwe_size = p.big_lwe_dimension().to_lwe_size();
        let mut data = vec![0u64; glwes.len() * lwe_size.0];
        data.par_chunks_mut(lwe_size.0)
            .zip(
                glwes
                    .list
                    .as_ref()
                    .par_chunks(p.glwe_dimension().to_glwe_size().0 * p.glwe.polynomial_size),
            )
            .for_each(|(o, g)| {
                let glwe = GlweCiphertext::from_container(
                    g,
                    p.polynomial_size(),
                    CiphertextModulus::new_native(),
                );
                let mut lwe = LweCiphertext::from_container(o, CiphertextModulus::new_native());
                extract_lwe_sample_from_glwe_ciphertext(&glwe, &mut lwe, MonomialDegree(0));
            });
        self.ops.record(
            OpKind::SampleExtract,
            glwes.len() as u64,
            p.glwe.polynomial_size as u64,
        );
        LweVector::new(
            glwes.key_set(),
            LweKeyKind::Big,
            glwes.encoding(),
            glwes.range(),
            glwes.variance(),
            LweCiphertextList::from_container(data, lwe_size, CiphertextModulus::new_native()),
        )
    }

    /// One GLWE per LWE ciphertext whose constant coefficient has the LWE's phase.
    fn embed_lwe(&self, x: &LweVector) -> PackedGlwe {
        let p = self.preset();
        let n = p.glwe.polynomial_size;
        let k = p.glwe.dimension;
        let glwe_len = (k + 1) * n;
        let lwe_size = x.as_list().lwe_size().0;
        let mut data = vec![0u64; x.len() * glwe_len];
        data.par_chunks_mut(glwe_len)
            .zip(x.as_list().as_ref().par_chunks(lwe_size))
            .for_each(|(g, lwe)| {
                // Inverse of sample extraction at degree 0: A_p[0] = a_{p,0}, A_p[N-i] = -a_{p,i}.
                for poly in 0..k {
                    let a = &lwe[poly * n..(poly + 1) * n];
                    let out = &mut g[poly * n..(poly + 1) * n];
                    out[0] = a[0];
                    for i in 1..n {
                        out[n - i] = a[i].wrapping_neg();
                    }
                }
                g[k * n] = lwe[k * n];
            });
        PackedGlwe {
            key_set: x.key_set(),
            encoding: x.encoding(),
            range: x.range(),
            variance: x.variance(),
            len: x.len(),
            list: GlweCiphertextList::from_container(
                data,
                p.glwe_dimension().to_glwe_size(),
                p.polynomial_size(),
                CiphertextModulus::new_native(),
            ),
        }
    }
}
