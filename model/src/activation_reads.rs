//! Pre-activations read at several offsets ([`crate::quant::QuantParams::activation_reads`]).
//!
//! A PBS reads `m` bits with a noise margin of half a box; a single finer read would halve that
//! margin and raise the failure probability far above the preset's. `K` reads of one
//! pre-activation, their tables rotated by `(2k + 1 - K) / 2K` of a box, each keep the whole
//! margin, and their sum is one read `log2 K` bits finer (Hermite's identity, exact for a linear
//! piece such as ReLU's; a curved activation gets the mean of `K` staggered staircases). A read's
//! offset moves the value by up to `(K - 1) / 2K` of a box, so the pre-activation rows fit a box
//! one step narrower at each end ([`crate::quant::QuantParams::activation_box`]).
//!
//! The hidden values then sum the noise of `K` PBS outputs (`2K` gated), so the quantizer
//! shares W2's noise allowance among them ([`crate::QuantizeOptions::w2_norm2_limit`]): a
//! coarser W2 at the same output noise. Which wins depends on the layer and the preset. On the
//! Hugging Face-style checkpoints (quantized reference, 300 records, cosine to the float block
//! output, BENCHMARKS.md), 2 reads take Switch's plain FFN from 0.989 to 0.994 on `fine`, while
//! the gated Mixtral and Qwen2-MoE lose there (0.978 -> 0.963, 0.984 -> 0.978); on `default`
//! all three gain (0.935 -> 0.942, 0.955 -> 0.965, 0.967 -> 0.986). One read is the default.

use crate::arch::FfnKind;
use crate::error::{ModelError, Result};
use crate::quantized::{affine_range, QuantizedMoe};
use crate::reference::Rounding;

impl QuantizedMoe {
    /// Worst-case range of the W1 accumulators (the pre-activations) of every FFN.
    pub(crate) fn pre_activation_range(&self) -> (i128, i128) {
        let d = self.config.d.0;
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        self.ffns()
            .map(|(x, _)| affine_range(&x.w1, x.b1.as_deref(), d, lo, hi))
            .fold((0, 0), |r, (a, z)| (r.0.min(a), r.1.max(z)))
    }

    /// The pre-activations' box ([`crate::quant::QuantParams::activation_box`] in accumulator
    /// units).
    pub fn pre_activation_box(&self) -> (i64, i64) {
        let s = self.input_shift();
        let (lo, hi) = self.quant.activation_box();
        (lo << s, hi << s)
    }

    /// The offsets of the pre-activations' reads at the layer's first-stage shift.
    pub fn activation_offsets(&self) -> Vec<i64> {
        self.quant.activation_offsets(self.input_shift())
    }

    /// The sum of the activation's (a gated FFN's silu factor's) tables at the reads of the
    /// pre-activation accumulator `a` at their offsets (one read: its table), in activation
    /// output steps: the hidden value of a plain FFN, the factor a gated FFN's linear read
    /// multiplies (each read's product with it, summed).
    pub fn activation_sum(&self, a: i64, rounding: &mut Rounding) -> i64 {
        let (s, q) = (self.input_shift(), &self.quant);
        self.activation_offsets()
            .iter()
            .map(|&o| {
                let v = rounding.read(a + o, s);
                match self.config.ffn {
                    FfnKind::Plain(f) => q.activation(f, v),
                    FfnKind::GatedSilu => q.gated_silu(v),
                }
            })
            .sum()
    }

    /// Refuses reads at offsets the layer cannot take: with the linear factor read inside the
    /// product (its quarter squares read the silu factor once), or a shift too small for whole
    /// offsets.
    pub(crate) fn validate_activation_reads(&self) -> Result<()> {
        let k = self.quant.activation_reads;
        if k <= 1 {
            return Ok(());
        }
        if self.linear_in_product && self.config.ffn == FfnKind::GatedSilu {
            return Err(ModelError::Config(format!(
                "{k} activation reads need the linear factor read on its own, not inside the \
                 product"
            )));
        }
        let least = k.trailing_zeros() + 1;
        if self.input_shift() < least {
            return Err(ModelError::Config(format!(
                "{k} activation reads need a first-stage shift of at least {least}, the layer's \
                 is {}",
                self.input_shift()
            )));
        }
        Ok(())
    }
}
