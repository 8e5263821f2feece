//! Comparisons of wide values by the sign of their difference, at the resolution of the blind
//! rotation rather than of a read's boxes.
//!
//! A requantizing read sees a wide accumulator through its top `message_bits` bits, so two
//! accumulators that fall in the same box compare equal. [`Evaluator::greater_than`] instead
//! blind-rotates `a - b` through a sign table: the difference of two values that each fill the
//! padded half of the torus fills the whole torus, and the table's negacyclic half gives its
//! sign. One such read decides correctly (probability at least `1 - 2^-64`) every difference
//! further than [`comparison_margin`] from the threshold (in torus units, about 0.011 on
//! `default`), whatever the encoding's width: the keyswitch and the modulus switch set it.
//!
//! Near ties are refined ([`comparison_refinement`]): one blind rotation of `d` read at two
//! thresholds, `+delta` and `-delta` with `delta` the margin (the sign table is constant, so a
//! second extracted coefficient moves the threshold), says whether `d` is clearly positive,
//! clearly negative or near 0; a second of `2^bits d` (no wrap for a `d` near 0, and the
//! keyswitch and modulus-switch noise unscaled) gives the sign near 0 `2^bits` times finer; the
//! bit is the majority of the three, one more PBS. Three PBS and three keyswitches per pair
//! instead of one, for a margin [`decision_margin`] 16 (`default`) to 32 (`fine`) times finer.
//! A difference within the refined margin (a near tie) may still come out either way.

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

/// Most bits a refined comparison scales the difference by (far more than any preset allows:
/// the margins bound it at 4 to 6 on the shipped presets).
const MAX_REFINEMENT_BITS: u32 = 30;

/// How [`Evaluator::greater_than`] refines a near tie (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refinement {
    /// The fine read sees the difference times `2^bits`.
    pub bits: u32,
    /// The coarse read's two thresholds sit at `+-offset / 2N` of the torus from the
    /// comparison's threshold (the coefficients `offset` and `N - offset` extracted).
    pub offset: usize,
}

/// The refinement of a comparison of inputs of total variance `input_var` on preset `p`: the
/// largest `bits` for which a difference the coarse read calls near 0 (within its thresholds
/// and their margin) reaches less than half a torus after scaling, the scaled noise within the
/// PBS budget. `None` where no scaling fits, or the preset's reads are too narrow for the
/// majority (`message_bits < 3`): the comparison is then one sign read.
pub fn comparison_refinement(p: &Preset, input_var: f64) -> Option<Refinement> {
    if p.message_bits < 3 {
        return None;
    }
    let two_n = 2.0 * p.glwe.polynomial_size as f64;
    let coarse = comparison_margin(p, input_var);
    // the thresholds at least the coarse margin from 0: neither fires on the wrong side of it
    let offset = (coarse * two_n).ceil() as usize;
    let near = offset as f64 / two_n + coarse;
    let budget = noise::pbs_input_budget(p);
    let mut best = None;
    for bits in 1..=MAX_REFINEMENT_BITS {
        let scale = 2f64.powi(bits as i32);
        let var = input_var * scale * scale;
        let reach = scale * near + comparison_margin(p, var) + 0.25 / p.glwe.polynomial_size as f64;
        if var > budget || reach >= 0.5 {
            break;
        }
        best = Some(Refinement { bits, offset });
    }
    best
}

/// Distance from the threshold (a fraction of the torus, at the scale of the difference)
/// beyond which [`Evaluator::greater_than`] decides wrongly with probability at most `2^-64`,
/// for inputs of total variance `input_var`: the fine read's margin over `2^bits` where the
/// comparison is refined, else [`comparison_margin`].
pub fn decision_margin(p: &Preset, input_var: f64) -> f64 {
    match comparison_refinement(p, input_var) {
        Some(r) => {
            let scale = 2f64.powi(r.bits as i32);
            comparison_margin(p, input_var * scale * scale) / scale
        }
        None => comparison_margin(p, input_var),
    }
}

/// Standard deviation (a fraction of the torus, at the scale of the difference) of the noise
/// that decides a near tie of [`Evaluator::greater_than`]: the fine read's over `2^bits` where
/// the comparison is refined. What a simulation of the comparison draws.
pub fn decision_std(p: &Preset, input_var: f64) -> f64 {
    let scale = comparison_refinement(p, input_var).map_or(1.0, |r| 2f64.powi(r.bits as i32));
    noise::variance_at_blind_rotation(p, input_var * scale * scale).sqrt() / scale
}

impl<'k> Evaluator<'k> {
    /// `[a_i > b_i]` for every pair of values of two vectors in the same encoding (any width),
    /// as bits in `out`. Refined where the preset allows ([`comparison_refinement`]): three
    /// PBS and three keyswitches per pair, else one. The difference must stay within half a
    /// torus of 0 by the coarse read's thresholds and margin (`|a - b|` a little below
    /// `2^width` by the declared ranges), and its noise within the PBS budget. The threshold
    /// sits at a difference of 1/2, so ties give 0; see [`decision_margin`] for the resolution.
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
        let n = p.glwe.polynomial_size;
        let var = a.variance() + b.variance();
        let refinement = comparison_refinement(p, var);
        // The widest difference, shifted by the threshold, the half position and the coarse
        // thresholds, must stay within half a torus of 0 by the decision margin, or its sign
        // would wrap.
        let widest = (a.range().max as i128 - b.range().min as i128)
            .max(b.range().max as i128 - a.range().min as i128);
        let step = 2f64.powi(-(enc.width as i32) - 1);
        let thresholds = refinement.map_or(0.0, |r| r.offset as f64 / (2.0 * n as f64));
        let reach =
            (widest as f64 + 0.5) * step + 0.25 / n as f64 + thresholds + comparison_margin(p, var);
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
        let half_position = 1u64 << (64 - 2 - n.trailing_zeros());
        let size = a.as_list().lwe_size().0;
        let mut words = a.as_list().as_ref().to_vec();
        for (d, s) in words
            .chunks_exact_mut(size)
            .zip(b.as_list().as_ref().chunks_exact(size))
        {
            for (x, y) in d.iter_mut().zip(s) {
                *x = x.wrapping_sub(*y);
            }
            d[size - 1] = d[size - 1].wrapping_sub(enc.delta() / 2);
        }
        // words (a - b - 1/2) * delta, scaled by `scale`, less the half position
        let phases = |scale: u64| -> Vec<u64> {
            let mut w: Vec<u64> = words.iter().map(|x| x.wrapping_mul(scale)).collect();
            for d in w.chunks_exact_mut(size) {
                d[size - 1] = d[size - 1].wrapping_sub(half_position);
            }
            w
        };
        let differences = |words: Vec<u64>, var: f64| {
            LweVector::new(
                a.key_set(),
                LweKeyKind::Big,
                label,
                ValueRange {
                    min: 0,
                    max: label.max(),
                },
                var,
                LweCiphertextList::from_container(
                    words,
                    LweSize(size),
                    CiphertextModulus::new_native(),
                ),
            )
        };
        let Some(r) = refinement else {
            // +-1 at half the output's step, plus 1: 0 or 2 half steps, i.e. the bit in `out`.
            let half = Encoding {
                width: out.width + 1,
                ..out
            };
            let signs = self.pbs(
                &differences(phases(1), var),
                &Lut::sign(p, label, half, &[0])?,
            )?;
            return self
                .add_plain(&signs, &vec![1; signs.len()])?
                .rescaled_down(out);
        };
        // One batch of blind rotations: the differences (read at -+offset) and the scaled
        // differences (read at 0), each extracting all three coefficients.
        let count = a.len();
        let scale = 1u64 << r.bits;
        let mut both = phases(1);
        both.extend(phases(scale));
        let fine_var = var * (scale as f64) * (scale as f64);
        let small = Encoding::signed(p.message_bits);
        let table = Lut::sign(p, label, small, &[0, r.offset, n - r.offset])?;
        let signs = self.pbs_many(&differences(both, fine_var), &table)?;
        // [d > -delta] and -[d > delta] as +-1, and the fine sign [2^bits d > 0]
        let above_low = signs[1].slice(0..count)?;
        let below_high = signs[2].slice(0..count)?;
        let fine = signs[0].slice(count..2 * count)?;
        let votes =
            self.linear_combination(&[&above_low, &below_high, &fine], &[1, -1, 1], small)?;
        let majority = Lut::univariate(p, small, out, |v| (v > 0) as i64)?;
        self.pbs(&votes, &majority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped preset refines a comparison of fresh values at least 16 times finer than
    /// one sign read, and refines nothing whose scaled noise would leave the PBS budget.
    #[test]
    fn shipped_presets_refine_comparisons_sixteen_times_or_more() {
        for name in ["default", "fine", "precise", "test"] {
            let p = Preset::load(name, true).unwrap();
            let r = comparison_refinement(&p, 0.0).expect(name);
            let (coarse, fine) = (comparison_margin(&p, 0.0), decision_margin(&p, 0.0));
            println!("{name}: {r:?}, margin {coarse:.2e} -> {fine:.2e}");
            assert!(r.bits >= 4, "{name}: {r:?}");
            assert!(fine <= coarse / 16.0, "{name}: {coarse} -> {fine}");
            // the thresholds clear the coarse margin, and the near region scaled stays within
            // half a torus
            let two_n = 2.0 * p.glwe.polynomial_size as f64;
            assert!(r.offset as f64 / two_n >= coarse);
            assert!(2f64.powi(r.bits as i32) * (r.offset as f64 / two_n + coarse) < 0.5);
            let budget = noise::pbs_input_budget(&p);
            assert_eq!(comparison_refinement(&p, budget), None, "{name}");
            assert!(decision_std(&p, 0.0) < fine);
        }
    }
}
