//! Products and combinations over one LWE ciphertext per value.

use super::WeightMatrix;
use crate::accounting::OpKind;
use crate::ciphertext::{LweKeyKind, LweVector};
use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};
use crate::evaluator::Evaluator;
use rayon::prelude::*;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::prelude::*;

/// Words per parallel task of a linear combination: a few LWE ciphertexts, enough to outweigh
/// the task's scheduling.
const COMBINATION_CHUNK: usize = 1 << 13;

impl<'k> Evaluator<'k> {
    /// `W x + bias` over LWE ciphertexts (big or small key).
    pub fn lwe_matvec(
        &self,
        w: &WeightMatrix,
        bias: Option<&[i64]>,
        x: &LweVector,
    ) -> Result<LweVector> {
        self.check_key_set(x.key_set())?;
        let (out_enc, out_range) =
            w.check_input("LWE matvec", x.len(), x.encoding(), x.range(), bias)?;
        let size = x.as_list().lwe_size().0;
        let in_data = x.as_list().as_ref();
        let delta = x.encoding().delta();
        let mut out = vec![0u64; w.rows.0 * size];
        out.par_chunks_mut(size).enumerate().for_each(|(r, acc)| {
            for (&wv, ct) in w.row(r).iter().zip(in_data.chunks_exact(size)) {
                if wv != 0 {
                    // acc + w c = acc - (-w) c: tfhe's kernel is dispatched to the CPU's widest
                    // SIMD (AVX-512's 64-bit multiply where present) with small weights
                    // specialized, where a plain loop here multiplies one word at a time
                    slice_wrapping_sub_scalar_mul_assign(acc, ct, (wv as u64).wrapping_neg());
                }
            }
            if let Some(b) = bias {
                acc[size - 1] = acc[size - 1].wrapping_add((b[r] as u64).wrapping_mul(delta));
            }
        });
        self.ops
            .record(OpKind::LweMulAdd, (w.rows.0 * w.cols.0) as u64, size as u64);
        Ok(LweVector::new(
            x.key_set(),
            x.key_kind(),
            out_enc,
            out_range,
            x.variance() * w.max_row_norm2_sq(),
            LweCiphertextList::from_container(
                out,
                x.as_list().lwe_size(),
                x.as_list().ciphertext_modulus(),
            ),
        ))
    }

    /// Trivial (noiseless, zero-mask) big-key encryptions of public constants, for the places
    /// where a protocol needs a known value as a ciphertext (for instance the one-hot of a
    /// single expert).
    pub fn trivial(&self, values: &[i64], encoding: Encoding) -> Result<LweVector> {
        encoding.validate()?;
        let p = self.preset();
        let size = p.big_lwe_dimension().to_lwe_size().0;
        let mut data = vec![0u64; values.len() * size];
        for (ct, &v) in data.chunks_exact_mut(size).zip(values) {
            ct[size - 1] = encoding.encode(v)?;
        }
        let lo = values.iter().copied().min().unwrap_or(0);
        let hi = values.iter().copied().max().unwrap_or(0);
        Ok(LweVector::new(
            self.key().key_set(),
            LweKeyKind::Big,
            encoding,
            ValueRange::new(lo, hi)?,
            0.0,
            LweCiphertextList::from_container(data, LweSize(size), CiphertextModulus::new_native()),
        ))
    }

    /// Adds plaintext constants (one per value, in the vector's encoding).
    pub fn add_plain(&self, x: &LweVector, constants: &[i64]) -> Result<LweVector> {
        self.check_key_set(x.key_set())?;
        if constants.len() != x.len() {
            return Err(EngineError::shape(
                "add_plain",
                format!("{} constants", x.len()),
                constants.len(),
            ));
        }
        let lo = constants.iter().min().copied().unwrap_or(0) as i128 + x.range().min as i128;
        let hi = constants.iter().max().copied().unwrap_or(0) as i128 + x.range().max as i128;
        let enc = x.encoding();
        if lo < enc.min() as i128 || hi > enc.max() as i128 {
            return Err(EngineError::range(
                "add_plain",
                format!("the result can reach [{lo}, {hi}], outside {enc:?}"),
            ));
        }
        let mut out = x.clone();
        out.range = ValueRange {
            min: lo as i64,
            max: hi as i64,
        };
        let size = out.list.lwe_size().0;
        let delta = x.encoding().delta();
        for (ct, &c) in out.list.as_mut().chunks_exact_mut(size).zip(constants) {
            ct[size - 1] = ct[size - 1].wrapping_add((c as u64).wrapping_mul(delta));
        }
        Ok(out)
    }

    /// Elementwise `sum_i coeffs[i] * parts[i]` (plaintext coefficients), e.g. a - b or a*2^w + b.
    pub fn linear_combination(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
    ) -> Result<LweVector> {
        self.combine(parts, coeffs, out_encoding, None)
    }

    /// [`Evaluator::linear_combination`] whose result is known, from the protocol's structure,
    /// to stay in `range`, narrower than the interval bound: for instance
    /// `max(a, b) = a + relu(b - a)` stays within the union of the ranges of `a` and `b`. The
    /// claim is public (it holds for every input), never derived from data.
    pub fn linear_combination_within(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
        range: ValueRange,
    ) -> Result<LweVector> {
        self.combine(parts, coeffs, out_encoding, Some(range))
    }

    fn combine(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
        known: Option<ValueRange>,
    ) -> Result<LweVector> {
        let first = parts
            .first()
            .ok_or_else(|| EngineError::shape("linear combination", "at least one input", 0))?;
        if parts.len() != coeffs.len() {
            return Err(EngineError::shape(
                "linear combination",
                format!("{} coefficients", parts.len()),
                coeffs.len(),
            ));
        }
        out_encoding.validate()?;
        self.check_key_set(first.key_set())?;
        let mut variance = 0.0;
        for p in parts {
            first.check_compatible(p, "linear combination")?;
            if p.len() != first.len() {
                return Err(EngineError::shape(
                    "linear combination",
                    format!("{} values", first.len()),
                    p.len(),
                ));
            }
        }
        if out_encoding.width != first.encoding().width {
            return Err(EngineError::shape(
                "linear combination",
                format!("output width {}", first.encoding().width),
                out_encoding.width,
            ));
        }
        let ranges: Vec<ValueRange> = parts.iter().map(|p| p.range()).collect();
        let (mut lo, mut hi) = ValueRange::affine(&ranges, coeffs, 0);
        if let Some(r) = known {
            lo = lo.max(r.min as i128);
            hi = hi.min(r.max as i128);
            if lo > hi {
                return Err(EngineError::range(
                    "linear combination",
                    format!("declared range {r:?} is disjoint from the interval bound"),
                ));
            }
        }
        if lo < out_encoding.min() as i128 || hi > out_encoding.max() as i128 {
            return Err(EngineError::range(
                "linear combination",
                format!("the result can reach [{lo}, {hi}], outside {out_encoding:?}"),
            ));
        }
        let mut data = vec![0u64; first.list.as_ref().len()];
        for (p, &c) in parts.iter().zip(coeffs) {
            variance += (c as f64) * (c as f64) * p.variance();
            // acc + c v = acc - (-c) v, by tfhe's dispatched kernel (see `lwe_matvec`)
            let minus_c = (c as u64).wrapping_neg();
            data.par_chunks_mut(COMBINATION_CHUNK)
                .zip(p.list.as_ref().par_chunks(COMBINATION_CHUNK))
                .for_each(|(a, v)| slice_wrapping_sub_scalar_mul_assign(a, v, minus_c));
        }
        self.ops.record(
            OpKind::LweMulAdd,
            (parts.len() * first.len()) as u64,
            first.list.lwe_size().0 as u64,
        );
        Ok(LweVector::new(
            first.key_set(),
            first.key_kind(),
            out_encoding,
            ValueRange {
                min: lo as i64,
                max: hi as i64,
            },
            variance,
            LweCiphertextList::from_container(
                data,
                first.list.lwe_size(),
                first.list.ciphertext_modulus(),
            ),
        ))
    }
}
