//! W2 in two digits: the expert outputs leave the server as `hi a + b_hi` and `lo a + b_lo`
//! with `W2 = 2^k hi + lo` ([`QuantizedMoe::output_digits`]), and the client adds them as
//! `2^k t_hi + t_lo`.
//!
//! Why: the outputs leave wide, and their noise is the hidden PBS outputs' times the W2 row's
//! 2-norm, fixed on the torus, while the encoding must hold the largest output. A finer W2
//! (larger integers) makes both the noise and the largest output grow, so the noise relative
//! to the output grows with W2's precision: measured on `fine` (Mixtral-style checkpoint), the
//! decrypted output was 9 % of its norm away from the exact one at the quantizer's former W2
//! limit, 18 % and 34 % at 2.5x and 5x finer W2. Split in two digits, each product has the
//! range and the noise of a W2 `2^k` times coarser, in an encoding that only has to hold a
//! digit's output: the client's sum has the finer W2's precision and about the coarser one's
//! relative noise. Each digit is one more LWE product per row (leveled, no PBS); the gates'
//! external products and the client's terms double.
//!
//! The reference semantics do not change: `2^k (hi a + b_hi) + (lo a + b_lo) = W2 a + b2`
//! exactly, so every check against the integer reference holds as before.

use crate::error::{ModelError, Result};
use crate::quant;
use crate::quantized::{affine_range, exceeded_box, ExpertWeights, QuantizedMoe};
use serde::{Deserialize, Serialize};

/// Largest digit shift a model may declare.
pub const MAX_DIGIT_SHIFT: u32 = 20;
/// Largest digit-output encoding width a model may declare (as for calibrated widths).
const MAX_DIGIT_WIDTH: u32 = 40;

/// How a model's W2 is split (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDigits {
    /// `k` of `W2 = 2^k hi + lo`, with `lo` in `[-2^(k-1), 2^(k-1))`.
    pub shift: u32,
    /// Signed encoding width of a digit output (before the extra bit of a top-2 difference):
    /// from the calibration records' range times the headroom, or the worst case.
    pub width: u32,
}

/// `v = 2^k hi + lo` with `hi = round(v / 2^k)` (half up) and `lo` in `[-2^(k-1), 2^(k-1))`.
pub fn split(v: i64, k: u32) -> (i64, i64) {
    let hi = quant::round_shift(v, k);
    (hi, v - (hi << k))
}

/// The largest digit shift whose low digit keeps every row of `h` entries within the squared
/// 2-norm `limit` in the worst case (`h 4^(k-1)`); 0 when no split fits.
pub fn shift_for_limit(limit: i64, h: usize) -> u32 {
    let mut k = 0;
    while k < MAX_DIGIT_SHIFT && (h as i128) << (2 * k) <= limit as i128 {
        k += 1;
    }
    k
}

/// The squared 2-norm a full W2 row may have so that both of its digits at shift `k` stay
/// within `limit` (`h` entries): the high digit's norm is at most the row's over `2^k` plus
/// its rounding (`sqrt(h) / 2`).
pub fn full_row_limit(limit: i64, h: usize, k: u32) -> i64 {
    if k == 0 {
        return limit;
    }
    let room = (limit as f64).sqrt() - (h as f64).sqrt() / 2.0;
    if room <= 1.0 {
        return limit;
    }
    ((room * room).floor() as i64).saturating_mul(1i64 << (2 * k))
}

impl QuantizedMoe {
    /// The matrix and biases the encrypted second stage of FFN `w` multiplies: W2 itself, or
    /// its two digits stacked (`[hi; lo]`, 2d rows).
    pub fn encrypted_w2(&self, w: &ExpertWeights) -> (Vec<i64>, Option<Vec<i64>>) {
        let Some(g) = self.output_digits else {
            return (w.w2.clone(), w.b2.clone());
        };
        let stack = |v: &[i64]| -> Vec<i64> {
            let (hi, lo): (Vec<i64>, Vec<i64>) = v.iter().map(|&x| split(x, g.shift)).unzip();
            hi.into_iter().chain(lo).collect()
        };
        (stack(&w.w2), w.b2.as_deref().map(stack))
    }

    /// Values per encrypted expert output: d, or 2d with digits.
    pub fn encrypted_output_rows(&self) -> usize {
        self.config.d.0 * if self.output_digits.is_some() { 2 } else { 1 }
    }

    /// The encrypted output of FFN `w` (`h` hidden units) from its hidden activations, exact:
    /// `W2 a + b2`, or the two digits' products stacked.
    pub fn encrypted_output(&self, w: &ExpertWeights, hidden: &[i64]) -> Vec<i64> {
        let (w2, b2) = self.encrypted_w2(w);
        crate::reference::matvec(&w2, b2.as_deref(), self.encrypted_output_rows(), hidden)
    }

    /// Worst-case range of every encrypted expert output (routed and shared).
    pub fn encrypted_output_range(&self) -> (i128, i128) {
        if self.output_digits.is_none() {
            return self.expert_output_range();
        }
        let (lo, hi) = self.quant.hidden_range(self.config.ffn);
        let mut r = (0i128, 0i128);
        for (x, h) in self.ffns() {
            let (w2, b2) = self.encrypted_w2(x);
            let (a, b) = affine_range(&w2, b2.as_deref(), h, lo, hi);
            r = (r.0.min(a), r.1.max(b));
        }
        r
    }

    /// The encrypted expert outputs an encoding of [`QuantizedMoe::encrypted_output_width`]
    /// holds.
    pub fn encrypted_output_box(&self) -> (i64, i64) {
        let w = self.encrypted_output_width();
        (-(1i64 << (w - 1)), (1i64 << (w - 1)) - 1)
    }

    /// The range the encrypted expert outputs are declared to take when their worst case
    /// exceeds [`QuantizedMoe::encrypted_output_box`] (a calibrated width); `None` otherwise.
    pub fn expert_output_declared(&self) -> Option<(i64, i64)> {
        let calibrated = match self.output_digits {
            Some(_) => true,
            None => self.calibrated_output_width.is_some(),
        };
        if !calibrated {
            return None;
        }
        exceeded_box(self.encrypted_output_box(), self.encrypted_output_range())
    }

    /// How many of a token's encrypted output values (the selected slots' and the shared
    /// expert's, [`QuantizedMoe::encrypted_outputs`]) fall outside
    /// [`QuantizedMoe::encrypted_output_box`].
    pub fn output_overflows(&self, reference: &crate::reference::RefOutput) -> usize {
        let (lo, hi) = self.encrypted_output_box();
        self.encrypted_outputs(reference)
            .iter()
            .flatten()
            .filter(|&&v| v < lo || v > hi)
            .count()
    }

    /// What the encrypted path holds of each slot's and then the shared expert's output in
    /// `reference`: `W2 a + b2`, or its two digits' products stacked.
    pub fn encrypted_outputs(&self, reference: &crate::reference::RefOutput) -> Vec<Vec<i64>> {
        let shared = reference.shared.as_ref().map(|(_, o)| o);
        if self.output_digits.is_none() {
            return reference
                .expert_outputs
                .iter()
                .chain(shared)
                .cloned()
                .collect();
        }
        let slots = reference
            .selected
            .iter()
            .zip(&reference.hidden)
            .map(|(&e, hd)| self.encrypted_output(&self.experts[e], hd));
        let shared = self
            .shared
            .as_ref()
            .zip(reference.shared_hidden.as_ref())
            .map(|(sh, hd)| self.encrypted_output(&sh.weights, hd));
        slots.chain(shared).collect()
    }

    /// Encoding width of an encrypted expert output (before the extra bit of a top-2
    /// difference): a digit's, or the whole output's ([`QuantizedMoe::expert_output_width`]).
    pub fn encrypted_output_width(&self) -> u32 {
        self.output_digits
            .map_or_else(|| self.expert_output_width(), |g| g.width)
    }

    /// The client's coefficients of one encrypted output's parts: `[1]`, or `[2^k, 1]` for
    /// the high and the low digit.
    pub fn output_digit_coefficients(&self) -> Vec<i64> {
        match self.output_digits {
            Some(g) => vec![1i64 << g.shift, 1],
            None => vec![1],
        }
    }

    /// A decrypted encrypted output as the client adds it up: `sum_i c_i part_i` over the
    /// digits' parts ([`QuantizedMoe::output_digit_coefficients`]), `W2 a + b2` (d values; the
    /// output itself without digits). Wrapping arithmetic: a decrypted value is bounded by its
    /// encoding, far inside `i64`.
    pub fn fold_output_digits(&self, o: &[i64]) -> Vec<i64> {
        let d = self.config.d.0;
        let mut y = vec![0i64; d];
        for (i, c) in self.output_digit_coefficients().iter().enumerate() {
            for (yi, v) in y.iter_mut().zip(o.iter().skip(i * d).take(d)) {
                *yi = yi.wrapping_add(c.wrapping_mul(*v));
            }
        }
        y
    }

    /// Checks declared digits: a shift in `1..=MAX_DIGIT_SHIFT` and a width that holds the
    /// hidden activations (which share the encoding) and stays inside 64-bit words.
    pub(crate) fn validate_output_digits(&self) -> Result<()> {
        let Some(g) = self.output_digits else {
            return Ok(());
        };
        let bad = |m: String| Err(ModelError::Config(m));
        if !(1..=MAX_DIGIT_SHIFT).contains(&g.shift) {
            return bad(format!(
                "output digit shift {} is outside 1..={MAX_DIGIT_SHIFT}",
                g.shift
            ));
        }
        let (lo, hi) = self.quant.hidden_range(self.config.ffn);
        let least = quant::hold_width(lo as i128, hi as i128).max(self.quant.message_bits);
        if g.width < least || g.width > MAX_DIGIT_WIDTH {
            return bad(format!(
                "output digit width {} is outside [{least}, {MAX_DIGIT_WIDTH}] (the hidden \
                 activations share the digits' encoding)",
                g.width
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_recompose_and_stay_small() {
        for k in 1..6 {
            for v in -200..200 {
                let (hi, lo) = split(v, k);
                assert_eq!((hi << k) + lo, v);
                assert!(
                    -(1 << (k - 1)) <= lo && lo < (1 << (k - 1)),
                    "{v} {k}: {lo}"
                );
            }
        }
    }

    fn model() -> QuantizedMoe {
        crate::linear_factor::tests::gated()
    }

    /// Digits and input widths a file may declare are checked: a shift of 0 or past the
    /// maximum, a width narrower than the hidden activations or past 40 bits, inputs narrower
    /// than a read or wider than 16 bits are refused; the digits' outputs add up to W2 a + b2.
    #[test]
    fn declared_digits_and_input_bits_are_validated() {
        let m = model();
        let w = m.encrypted_output_width();
        for (shift, width, ok) in [
            (2, w, true),
            (0, w, false),
            (MAX_DIGIT_SHIFT + 1, w, false),
            (2, 2, false),
            (2, MAX_DIGIT_WIDTH + 1, false),
        ] {
            let mut d = m.clone();
            d.output_digits = Some(OutputDigits { shift, width });
            assert_eq!(d.validate().is_ok(), ok, "shift {shift} width {width}");
        }
        for (bits, ok) in [(4, true), (8, true), (3, false), (17, false)] {
            let mut q = m.clone();
            q.quant.input_bits = bits;
            assert_eq!(q.validate().is_ok(), ok, "input bits {bits}");
        }
        let mut d = m.clone();
        d.output_digits = Some(OutputDigits { shift: 2, width: w });
        let hidden = vec![3, -7, 11, 0];
        for x in &m.experts {
            let parts = d.encrypted_output(x, &hidden);
            assert_eq!(parts.len(), 12);
            let whole = crate::reference::matvec(&x.w2, x.b2.as_deref(), 6, &hidden);
            assert_eq!(d.fold_output_digits(&parts), whole);
        }
    }

    #[test]
    fn the_shift_keeps_the_low_digit_within_the_limit() {
        // 32 entries of at most 2^(k-1): 32 * 4^(k-1) <= 128 for k <= 2
        assert_eq!(shift_for_limit(128, 32), 2);
        assert_eq!(shift_for_limit(512, 128), 2);
        assert_eq!(shift_for_limit(31, 32), 0);
        for (limit, h) in [(128, 32), (512, 128), (2000, 16)] {
            let k = shift_for_limit(limit, h);
            assert!(((h as i64) << (2 * (k - 1))) <= limit);
            // the full row's limit keeps the high digit within the limit too
            let full = full_row_limit(limit, h, k);
            let room = (full as f64).sqrt() / 2f64.powi(k as i32) + (h as f64).sqrt() / 2.0;
            assert!(room * room <= limit as f64 + 1e-9, "{limit} {h}");
        }
    }
}
