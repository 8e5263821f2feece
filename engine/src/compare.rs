//! Comparisons of wide values by the sign of their difference, at the resolution of the blind
//! rotation rather than of a read's boxes.
//!
//! A requantizing read sees a wide accumulator through its top `message_bits` bits, so two
//! accumulators that fall in the same box compare equal. [`Evaluator::greater_than`] instead
//! blind-rotates `a - b` through a sign table: the difference of two values that each fill the
//! padded half of the torus fills the whole torus, and the table's negacyclic half gives its
//! sign. The decision is exact except within the noise of its threshold: a difference of at least
//! [`comparison_margin`] from `1/2` (in units of the encoding) is decided correctly with
//! probability at least `1 - 2^-64`, and a closer one (a near tie) may come out either way.

use crate::ciphertext::{LweKeyKind, LweVector};
use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};
use crate::evaluator::Evaluator;
use crate::lut::Lut;
use crate::noise;
use crate::preset::Preset;
use tfhe::core_crypto::prelude::*;

/// Distance from a comparison's threshold, as a fraction of the torus, beyond which
/// [`Evaluator::greater_than`] decides wrongly with probability at most `2^-64`, for inputs of
/// total variance `input_var` (the two values' variances summed).
pub fn comparison_margin(p: &Preset, input_var: f64) -> f64 {
    noise::kappa_for_log2_p(-64.0) * noise::variance_at_blind_rotation(p, input_var).sqrt()
}

impl<'k> Evaluator<'k> {
    /// `[a_i > b_i]` for every pair of values of two vectors in the same encoding (any width),
    /// as bits in `out`: one keyswitch and one blind rotation per pair. The difference must stay
    /// within half a torus of 0 by the decision margin (`|a - b|` a little below `2^width` by
    /// the declared ranges), and its noise within the PBS budget. The threshold sits at a difference of 1/2, so ties give 0; see
    /// [`comparison_margin`] for the resolution.
    pub fn greater_than(&self, a: &LweVector, b: &LweVector, out: Encoding) -> Result<LweVector> {
        self.check_big_input(a, "comparison")?;
        self.check_big_input(b, "comparison")?;
        a.check_compatible(b, "comparison")?;
        if a.len() != b.len() || a.encoding() != b.encoding() {
            return Err(EngineError::shape(
                "comparison",
                format!("{} values in {:?}", a.len(), a.encoding()),
                format!("{} values in {:?}", b.len(), b.encoding()),
            ));
        }
        if !out.signed {
            return Err(EngineError::range(
                "comparison",
                format!("the bit's encoding must be signed, got {out:?}"),
            ));
        }
        let enc = a.encoding();
        let p = self.preset();
        // The widest difference, shifted by the threshold and the half position, must stay
        // within half a torus of 0 by the decision margin, or its sign would wrap.
        let widest = (a.range().max as i128 - b.range().min as i128)
            .max(b.range().max as i128 - a.range().min as i128);
        let step = 2f64.powi(-(enc.width as i32) - 1);
        let reach = (widest as f64 + 0.5) * step
            + 0.25 / p.glwe.polynomial_size as f64
            + comparison_margin(p, a.variance() + b.variance());
        if reach >= 0.5 || enc.width > 60 {
            return Err(EngineError::range(
                "comparison",
                format!(
                    "differences up to {widest} in {enc:?} reach {reach:.4} of the torus with \
                     the decision margin; the sign needs less than 1/2"
                ),
            ));
        }
        // The difference is labelled unsigned so that no PBS offset is added: its phase is
        // (a - b) * delta over the whole torus. The threshold moves to a difference of 1/2
        // (strict comparison of integers), less the modulus switch's half position, at which a
        // phase rounds up into the table's positive half.
        let label = Encoding::unsigned(enc.width);
        let half_position = 1u64 << (64 - 2 - p.glwe.polynomial_size.trailing_zeros());
        let offset = (enc.delta() / 2).wrapping_add(half_position).wrapping_neg();
        let size = a.as_list().lwe_size().0;
        let mut words = a.as_list().as_ref().to_vec();
        for (d, s) in words
            .chunks_exact_mut(size)
            .zip(b.as_list().as_ref().chunks_exact(size))
        {
            for (x, y) in d.iter_mut().zip(s) {
                *x = x.wrapping_sub(*y);
            }
            d[size - 1] = d[size - 1].wrapping_add(offset);
        }
        let diff = LweVector::new(
            a.key_set(),
            LweKeyKind::Big,
            label,
            ValueRange {
                min: 0,
                max: label.max(),
            },
            a.variance() + b.variance(),
            LweCiphertextList::from_container(
                words,
                LweSize(size),
                CiphertextModulus::new_native(),
            ),
        );
        // +-1 at half the output's step, plus 1: 0 or 2 half steps, i.e. the bit in `out`.
        let half = Encoding {
            width: out.width + 1,
            ..out
        };
        let signs = self.pbs(&diff, &Lut::sign(p, label, half)?)?;
        self.add_plain(&signs, &vec![1; signs.len()])?
            .rescaled_down(out)
    }
}
