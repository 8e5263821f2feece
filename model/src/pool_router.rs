//! The integer router of a model pool and its decision chain: which model answers an input.
//!
//! A pool router does not need its scores, only the top one. Reading each score through a
//! 4-bit PBS (as an MoE router does) quantizes it to a sixteenth of its worst-case range, which
//! over 64 dense features is several times the spread the scores really take: most inputs'
//! top scores fall into one read step and the choice becomes a tie. The chain instead decides
//! each comparison by the sign of a score difference, and a PBS reads a sign as finely as its
//! noise allows, not its box: the table changes value at one edge, placed between the
//! differences 0 and 1.
//!
//! The chain, for accumulators `acc_m = w_m . x + b_m` (models cheapest first): for
//! `k = 1 .. M-1`, `c_k = [acc_k > acc_j for every j < k]`, i.e. model `k` beats every cheaper
//! model; the chosen model is the last `k` with `c_k = 1` (model 0 when none is). Ties keep the
//! cheaper model. Each `[acc_k - acc_j >= 1]` is one sign read of a pair's difference, all
//! pairs in one batch; `c_k` is the AND of its `k` reads (one small read of their sum), and the
//! one-hot follows from the bits: model `k` answers iff `c_k = 1` and no later `c_j` is 1.
//!
//! Cost per input, all public: `M (M - 1) / 2` sign reads, `M - 2` ANDs (more for pools above
//! 8 models, whose sums are split), and `2 (M - 2)` small reads for the one-hot; no circuit
//! bootstrap. (An earlier chain read only `acc_k - acc_winner` and carried the winner's
//! accumulator by a circuit bootstrap and an external product per step: a circuit bootstrap
//! costs several PBS, so the pairs are cheaper up to about a dozen models, and the bits are the
//! same.)

use crate::error::{ModelError, Result};
use crate::quant::{read_width, QuantParams};
use crate::quantized::affine_range;
use crate::reference::{matvec, Rounding};
use serde::{Deserialize, Serialize};

/// The router over a pool's models: one integer row per model (`models x d`, row-major).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRouter {
    pub weights: Vec<i64>,
    pub bias: Option<Vec<i64>>,
    /// The pool's quantization (the router reads with its `message_bits`).
    pub quant: QuantParams,
}

/// What the router decides for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolChoice {
    /// The router's exact accumulators, one per model.
    pub accumulators: Vec<i64>,
    /// The chain's bits `c_1 .. c_{M-1}`: 1 where model `k` beat every cheaper model.
    pub decisions: Vec<i64>,
    /// The chosen model.
    pub model: usize,
    /// Whether every sign read was at least half a read step from its edge: then the encrypted
    /// chain gives exactly these decisions (otherwise either side of the edge is correct).
    pub clear_of_edges: bool,
}

/// The sign read of a chain step: the encoding of the differences and where the edge sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignRead {
    /// Signed encoding width of the router's input, its accumulators and their differences.
    pub width: u32,
    /// Bits the PBS reads (the pool's message bits); the read's step is `2^(width - bits)`.
    pub bits: u32,
    /// Added to a difference before the read, so that the edge between "0" and "1" boxes falls
    /// between the differences 0 and 1.
    pub offset: i64,
}

impl SignRead {
    /// The read for differences of accumulators in `[lo, hi]`: the smallest width whose top
    /// `bits` bits hold every difference plus the offset with half a step to spare.
    pub fn for_range(lo: i128, hi: i128, bits: u32) -> SignRead {
        let offset_for = |width: u32| -> i64 {
            let shift = width - bits;
            if shift == 0 {
                0
            } else {
                (1i64 << (shift - 1)) - 1
            }
        };
        let mut width = read_width(lo - hi, hi - lo, bits);
        loop {
            let offset = offset_for(width);
            let w = read_width(lo - hi, hi - lo + offset as i128, bits);
            if w == width {
                return SignRead {
                    width,
                    bits,
                    offset,
                };
            }
            width = w;
        }
    }

    /// Right shift of the read (its step is `2^shift`).
    pub fn shift(&self) -> u32 {
        self.width - self.bits
    }

    /// The read's table: 1 for the boxes at or above the one holding `1 + offset`.
    pub fn bit_of_quotient(q: i64) -> i64 {
        (q >= 1) as i64
    }

    /// `[v >= 1]` as the PBS reads it, and whether `v` is at least half a step from the edge.
    pub fn decide(&self, v: i64, rounding: &mut Rounding) -> (i64, bool) {
        let s = self.shift();
        let shifted = v + self.offset;
        // the edge is at `shifted = 2^(s-1)`; the read is exact at least half a step away
        let clear = s == 0 || (shifted - (1i64 << (s - 1))).abs() >= 1i64 << (s - 1);
        (Self::bit_of_quotient(rounding.read(shifted, s)), clear)
    }
}

/// The pairs `(j, k)`, `j < k`, whose sign `[acc_k - acc_j >= 1]` the chain reads, grouped by
/// `k` (the reads of `c_k` are entries `k (k - 1) / 2 ..` of this order).
pub fn pairs(models: usize) -> impl Iterator<Item = (usize, usize)> {
    (1..models).flat_map(|k| (0..k).map(move |j| (j, k)))
}

/// The model a chain's bits choose: the last `k` with `c_k = 1` (the bits are `c_1 ..`), model
/// 0 when none is; `None` when a bit is neither 0 nor 1.
pub fn chain_winner(decisions: &[i64]) -> Option<usize> {
    let mut model = 0;
    for (i, &c) in decisions.iter().enumerate() {
        match c {
            0 => {}
            1 => model = i + 1,
            _ => return None,
        }
    }
    Some(model)
}

impl PoolRouter {
    /// Models routed over, for inputs of `d` features.
    pub fn models(&self, d: usize) -> usize {
        self.weights.len() / d.max(1)
    }

    /// Worst-case range of every accumulator over inputs in the quantizer's range.
    pub fn accumulator_range(&self, d: usize) -> (i128, i128) {
        let q = &self.quant;
        affine_range(
            &self.weights,
            self.bias.as_deref(),
            d,
            q.input_min(),
            q.input_max(),
        )
    }

    /// The chain's sign read (and so the encoding width of the router's encrypted input).
    pub fn sign_read(&self, d: usize) -> SignRead {
        let (lo, hi) = self.accumulator_range(d);
        SignRead::for_range(lo, hi, self.quant.message_bits)
    }

    /// Encoding width of the router's encrypted input of `d` features.
    pub fn input_width(&self, d: usize) -> u32 {
        self.sign_read(d).width
    }

    /// `W x + b` (exact; the router validated for inputs of `x.len()` features).
    pub fn accumulators(&self, x: &[i64]) -> Vec<i64> {
        matvec(&self.weights, self.bias.as_deref(), self.models(x.len()), x)
    }

    /// The chain on a quantized input (the plaintext reference of the encrypted router): the
    /// pairs' sign reads in the encrypted batch's order ([`pairs`]), then the bits.
    pub fn choose(&self, x_q: &[i64], rounding: &mut Rounding) -> PoolChoice {
        let read = self.sign_read(x_q.len());
        let accumulators = self.accumulators(x_q);
        let m = accumulators.len();
        let reads: Vec<(i64, bool)> = pairs(m)
            .map(|(j, k)| read.decide(accumulators[k] - accumulators[j], rounding))
            .collect();
        // c_k is settled when every read is clear of its edge, or when one is clearly 0 (the
        // AND is 0 whichever way the others fall)
        let mut clear_of_edges = true;
        let decisions: Vec<i64> = (1..m)
            .map(|k| {
                let first = k * (k - 1) / 2;
                let own = &reads[first..first + k];
                clear_of_edges &= own.iter().all(|&(_, clear)| clear) || own.contains(&(0, true));
                own.iter().all(|&(c, _)| c == 1) as i64
            })
            .collect();
        let model = chain_winner(&decisions).unwrap_or(0);
        PoolChoice {
            accumulators,
            decisions,
            model,
            clear_of_edges,
        }
    }

    /// Checks the shape for `models` models of `d` features and the weights' magnitude.
    pub fn validate(&self, models: usize, d: usize) -> Result<()> {
        self.quant.validate()?;
        if self.weights.len() != models * d || self.bias.as_ref().is_some_and(|b| b.len() != models)
        {
            return Err(ModelError::Weights(format!(
                "pool router: {} weights and {} biases for {models} models of {d} features",
                self.weights.len(),
                self.bias.as_ref().map_or(0, Vec::len)
            )));
        }
        if self
            .weights
            .iter()
            .chain(self.bias.iter().flatten())
            .any(|w| w.abs() > crate::quantized::MAX_WEIGHT)
        {
            return Err(ModelError::Weights(format!(
                "pool router: a weight is above {} in magnitude",
                crate::quantized::MAX_WEIGHT
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(weights: Vec<i64>, bias: Option<Vec<i64>>) -> PoolRouter {
        PoolRouter {
            weights,
            bias,
            quant: QuantParams::for_message_bits(4),
        }
    }

    #[test]
    fn the_chain_picks_the_top_accumulator_with_ties_to_the_cheaper() {
        // one feature per model
        let r = router(vec![1, 0, 0, 0, 1, 0, 0, 0, 1], None);
        for (x, want) in [
            (vec![3, 1, 2], 0),
            (vec![1, 3, 2], 1),
            (vec![1, 2, 3], 2),
            (vec![2, 2, 2], 0),
            (vec![-8, 7, 7], 1),
            (vec![-8, -8, 7], 2),
        ] {
            let c = r.choose(&x, &mut Rounding::Exact);
            assert_eq!(c.model, want, "{x:?}: {c:?}");
            assert_eq!(c.decisions.len(), 2);
            assert_eq!(chain_winner(&c.decisions), Some(want));
        }
    }

    #[test]
    fn a_tie_that_cannot_change_a_bit_is_clear() {
        // wide weights so that the read is coarse: differences next to 0 are near its edge
        let r = router(vec![64, 0, 0, 0, 64, 0, 0, 0, 64], None);
        assert!(r.sign_read(3).shift() > 0);
        // models 0 and 2 tie far below model 1: [acc_2 > acc_0] is unclear, but
        // [acc_2 > acc_1] is clearly 0, so c_2 is 0 either way
        let c = r.choose(&[-8, 7, -8], &mut Rounding::Exact);
        assert_eq!((c.model, c.clear_of_edges), (1, true), "{c:?}");
        // the top two tie: the choice itself hangs on the noise
        let c = r.choose(&[-8, 7, 7], &mut Rounding::Exact);
        assert_eq!((c.model, c.clear_of_edges), (1, false), "{c:?}");
        assert_eq!(pairs(4).collect::<Vec<_>>().len(), 6);
        assert_eq!(pairs(3).collect::<Vec<_>>(), [(0, 1), (0, 2), (1, 2)]);
    }

    #[test]
    fn the_sign_read_decides_at_one_with_room_at_the_top() {
        for (lo, hi) in [(-8i128, 7i128), (-100, 300), (-40_000, 5), (0, 1 << 20)] {
            let read = SignRead::for_range(lo, hi, 4);
            let s = read.shift();
            // the widest difference plus the offset stays a step below the encoding's top
            let top = (hi - lo) as i64 + read.offset;
            assert!(top <= (1i64 << (read.width - 1)) - (1i64 << s), "{read:?}");
            for v in [lo - hi, -1, 0, 1, 2, hi - lo] {
                let (c, _) = read.decide(v as i64, &mut Rounding::Exact);
                assert_eq!(c, (v >= 1) as i64, "range [{lo}, {hi}], v = {v}, {read:?}");
            }
            // only the differences next to the edge are unclear, and only for a coarse read
            let clear = |v| read.decide(v, &mut Rounding::Exact).1;
            assert!(clear(-(1i64 << s)) && clear(1 << s), "{read:?}");
        }
    }

    #[test]
    fn a_sign_read_is_finer_than_a_read_step() {
        // differences far inside one read step are still told apart by their sign
        let read = SignRead::for_range(-1000, 1000, 4);
        assert!(read.shift() >= 7);
        assert_eq!(read.decide(3, &mut Rounding::Exact).0, 1);
        assert_eq!(read.decide(-3, &mut Rounding::Exact).0, 0);
    }
}
