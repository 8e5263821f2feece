//! The activation's output scale and the second stage (W2): one scale for all experts, set by
//! the integer value of the largest weight, with every row pruned to the noise budget of the
//! PBS that reads `W2 a`.

use super::context::Context;
use super::options::QuantChoice;
use crate::arch::FfnKind;
use crate::output_digits;
use crate::quant::{Activation, QuantParams};
use crate::quantized::ExpertWeights;

/// The second stage of one candidate, and the figures its report shows.
pub(super) struct SecondStage {
    /// Real value of one unit of W2's integer weights.
    pub(super) sigma2: f64,
    /// Largest squared 2-norm of an encrypted W2 row (a digit's, with digits) that the noise
    /// allowance allows.
    pub(super) limit: i64,
    /// `k` of W2's two digits (see [`crate::output_digits`]); 0: W2 in one piece.
    pub(super) digit_shift: u32,
    /// Integer weights that ended at zero, over all experts.
    pub(super) zeroed: usize,
    /// Largest squared 2-norm of an integer row.
    pub(super) norm2_sq: i64,
    /// Largest integer magnitude.
    pub(super) max_abs: i64,
}

/// `act_out_scale`: the real value of one activation-output step that maps the largest
/// activation reachable from the input box (at input scale `act_in`) onto the top of the
/// output range (the factor range for gated FFNs, the signed m-bit box otherwise), times
/// `act_clip` <= 1 (clipping the rare large activations buys resolution for the rest).
pub(super) fn act_out_scale(ffn: FfnKind, quant: &QuantParams, act_in: f64, act_clip: f64) -> f64 {
    let gated = ffn == FfnKind::GatedSilu;
    let act = match ffn {
        FfnKind::GatedSilu => Activation::Silu,
        FfnKind::Plain(a) => a,
    };
    let top_in = quant.read_max() as f64 * act_in;
    let out_hi = if gated {
        quant.factor_range().1
    } else {
        quant.read_max()
    } as f64;
    let reach = act
        .apply(top_in)
        .max(act.apply(-(quant.read_min() as f64) * act_in))
        .max(1e-12);
    (act_clip * reach / out_hi).max(1e-12)
}

impl Context<'_> {
    /// Quantizes every expert's W2 (and b2) into `experts` (the routed experts, then the shared
    /// expert if the model has one: one scale for all, so their outputs add in the same units).
    /// `act_out` is the activation's output step and `w3_steps[i][j]` the real value of one W3
    /// read step of expert `i`'s hidden unit `j` (empty for plain FFNs): their product is the
    /// real value of one unit of the integer hidden activation, which W2's column `j`
    /// multiplies, so it is folded into the column before the common scale is chosen.
    pub(super) fn second_stage(
        &self,
        choice: &QuantChoice,
        act_out: f64,
        w3_steps: &[Vec<f64>],
        experts: &mut [ExpertWeights],
    ) -> SecondStage {
        let m = self.model;
        let d = m.config.d.0;
        let gated = m.config.ffn == FfnKind::GatedSilu;
        let ffns: Vec<&crate::checkpoint::FloatExpert> = m.ffns().collect();
        let unit = |i: usize, j: usize| -> f64 { act_out * w3_steps.get(i).map_or(1.0, |r| r[j]) };
        // One scale for all experts: the largest real weight becomes `w2_top`.
        let mut max_real = 0f64;
        for (i, x) in ffns.iter().enumerate() {
            let h = x.w2.ncols();
            for r in 0..d {
                for j in 0..h {
                    max_real = max_real.max((x.w2[[r, j]] as f64 * unit(i, j)).abs());
                }
            }
        }
        let sigma2 = (max_real / choice.w2_top.max(1e-6)).max(1e-30);
        // No PBS reads W2 a (the output leaves wide): the limit is the client's decryption
        // noise, not a read's budget.
        let limit = self
            .opts
            .w2_norm2_limit(gated, m.config.subtracts_slot_outputs());
        // With digits, the limit holds for each digit's row: the whole row may be 4^k larger.
        let h_max = ffns.iter().map(|x| x.w2.ncols()).max().unwrap_or(1);
        let digit_shift = if self.opts.output_digits {
            output_digits::shift_for_limit(limit, h_max)
        } else {
            0
        };
        let row_limit = output_digits::full_row_limit(limit, h_max, digit_shift);
        let clip = ((row_limit as f64).sqrt().floor() as i64).max(1);
        let l1_budget = choice.w2_l1.unwrap_or(i64::MAX).max(1);
        let mut stage = SecondStage {
            sigma2,
            limit,
            digit_shift,
            zeroed: 0,
            norm2_sq: 0,
            max_abs: 0,
        };
        for (i, x) in ffns.iter().enumerate() {
            let h = x.w2.ncols();
            let mut w2 = vec![0i64; d * h];
            for r in 0..d {
                let reals: Vec<f64> = (0..h).map(|j| x.w2[[r, j]] as f64 * unit(i, j)).collect();
                let row = w2_row(&reals, sigma2, clip, row_limit, l1_budget);
                stage.zeroed += row.iter().filter(|&&v| v == 0).count();
                stage.norm2_sq = stage.norm2_sq.max(row.iter().map(|v| v * v).sum());
                stage.max_abs = stage
                    .max_abs
                    .max(row.iter().map(|v| v.abs()).max().unwrap_or(0));
                w2[r * h..(r + 1) * h].copy_from_slice(&row);
            }
            experts[i].w2 = w2;
            experts[i].b2 = x.b2.as_ref().map(|b| {
                b.iter()
                    .map(|&v| (v as f64 / sigma2).round() as i64)
                    .collect()
            });
        }
        stage
    }
}

/// One integer W2 row from its real weights: rounded at `sigma2` and clipped to `+-clip`, then
/// the smallest weights (by real magnitude) are dropped until the row's squared 2-norm is
/// within `limit` (the wide output's noise allowance) and its L1 norm within `l1_budget` (a
/// trained model's declared budget). A row is never emptied: its last weight is clipped to the L1
/// budget instead.
fn w2_row(reals: &[f64], sigma2: f64, clip: i64, limit: i64, l1_budget: i64) -> Vec<i64> {
    let h = reals.len();
    let mut row: Vec<i64> = reals
        .iter()
        .map(|&v| ((v / sigma2).round() as i64).clamp(-clip, clip))
        .collect();
    let mut order: Vec<usize> = (0..h).collect();
    order.sort_by(|&a, &b| reals[a].abs().total_cmp(&reals[b].abs()));
    let mut k = 0;
    while k < h
        && (row.iter().map(|v| v * v).sum::<i64>() > limit
            || row.iter().map(|v| v.abs()).sum::<i64>() > l1_budget)
    {
        let others: i64 = row.iter().map(|v| v.abs()).sum::<i64>() - row[order[k]].abs();
        if others == 0 {
            // the last weight: clip it to the budget rather than drop the row
            let w = row[order[k]];
            row[order[k]] = w.signum() * w.abs().min(l1_budget);
            break;
        }
        row[order[k]] = 0;
        k += 1;
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_rows_meet_their_budgets() {
        let reals = [0.9, -0.1, 2.0, -3.5, 0.05, 1.2];
        // clip 2, norm^2 <= 12, L1 <= 5
        let row = w2_row(&reals, 0.5, 2, 12, 5);
        assert!(row.iter().all(|v| v.abs() <= 2));
        assert!(row.iter().map(|v| v * v).sum::<i64>() <= 12);
        assert!(row.iter().map(|v| v.abs()).sum::<i64>() <= 5);
        // the largest weights survive
        assert_eq!((row[2], row[3]), (2, -2));
        // a single weight is clipped to the budget, not dropped
        assert_eq!(w2_row(&[0.0, 9.0, 0.0], 1.0, 3, 12, 2), vec![0, 2, 0]);
    }
}
