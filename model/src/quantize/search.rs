//! The search over [`QuantChoice`]s: coordinate descent that maximises the agreement with the
//! float model on the calibration records (see [`super::context::Context::score`]).

use super::context::Context;
use super::options::{QuantChoice, QuantizeOptions};
use super::report::QuantizeReport;
use crate::arch::{FfnKind, Gating};
use crate::checkpoint::FloatMoeModel;
use crate::classifier::QuantizedClassifier;
use crate::error::Result;
use crate::quant::QuantParams;

/// Full passes over the coordinates at most: a second pass catches what the later coordinates
/// changed for the earlier ones, and the search stops as soon as a pass gains nothing.
const MAX_PASSES: usize = 2;
/// A candidate must beat the best score by more than this (rounding noise is no gain).
const MIN_GAIN: f64 = 1e-12;
/// Logit zero points tried on either side of the best one so far.
const LOGIT_ZERO_POINT_RADIUS: i64 = 6;
/// Prune fractions tried for the router, W1 and W3.
const PRUNES: [f64; 6] = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3];
/// Activation clipping factors tried.
const ACT_CLIPS: [f64; 7] = [1.0, 0.85, 0.7, 0.55, 0.45, 0.35, 0.25];
/// Integer values of the largest W2 weight tried (the noise limit clips them).
const W2_TOPS: [f64; 19] = [
    1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0, 40.0,
    50.0, 64.0,
];
/// L1 budgets of an integer W2 row tried (`None`: the noise limit only).
const W2_L1S: [Option<i64>; 8] = [
    Some(1),
    Some(2),
    Some(3),
    Some(4),
    Some(6),
    Some(8),
    Some(12),
    None,
];

/// One coordinate of the search, in the order they are visited: the router's zero point
/// first (it moves with every other router choice), the output side last.
#[derive(Debug, Clone, Copy)]
enum Coordinate {
    LogitZeroPoint,
    RouterPrune,
    W1Prune,
    W3Prune,
    ActClip,
    W2Top,
    W2L1,
    SwitchNumerator,
    RouterCenter,
}

const COORDINATES: [Coordinate; 9] = [
    Coordinate::LogitZeroPoint,
    Coordinate::RouterPrune,
    Coordinate::W1Prune,
    Coordinate::W3Prune,
    Coordinate::ActClip,
    Coordinate::W2Top,
    Coordinate::W2L1,
    Coordinate::SwitchNumerator,
    Coordinate::RouterCenter,
];

/// What of the model decides which coordinates mean anything.
struct Space {
    /// More than one expert: the router choices matter.
    routed: bool,
    /// The router's prune is a choice: not with pairwise routing, whose comparisons see the
    /// router weights themselves. Pruning shrinks the logit reads' step (finer gates) and wins
    /// on the calibration records' score, but it moves near-tied comparisons: on the Hugging
    /// Face-style Switch checkpoint (5-bit reads, 2 activation reads) a pruned router chose
    /// the float router's expert on 99.3 % of the held-out records, the whole one on 100 %
    /// (block cosine 0.991 -> 0.998).
    router_prunable: bool,
    /// Gated FFN: W3 has its own prune.
    gated: bool,
    /// Switch/Qwen gating: the softmax numerator is a choice.
    switch_gating: bool,
    switch_cap: i64,
}

impl Space {
    fn of(model: &FloatMoeModel, opts: &QuantizeOptions) -> Space {
        Space {
            routed: model.config.experts.0 > 1,
            router_prunable: !opts.pairwise_routing,
            gated: model.config.ffn == FfnKind::GatedSilu,
            switch_gating: model.config.gating == Gating::SoftmaxThenTopK,
            switch_cap: QuantParams::for_message_bits(opts.message_bits).switch_cap(),
        }
    }

    /// The candidates of `coord` around `c0` (the best choice so far, whose built logit zero
    /// point is `z0`); none when the coordinate does not apply to the model.
    fn tries(&self, coord: Coordinate, c0: QuantChoice, z0: i64) -> Vec<QuantChoice> {
        use Coordinate::*;
        match coord {
            LogitZeroPoint if self.routed => (z0 - LOGIT_ZERO_POINT_RADIUS
                ..=z0 + LOGIT_ZERO_POINT_RADIUS)
                .map(|z| QuantChoice {
                    logit_zero_point: Some(z),
                    ..c0
                })
                .collect(),
            RouterPrune if self.routed && self.router_prunable => PRUNES
                .iter()
                .map(|&p| QuantChoice {
                    router_prune: p,
                    ..c0
                })
                .collect(),
            W1Prune => PRUNES
                .iter()
                .map(|&p| QuantChoice { w1_prune: p, ..c0 })
                .collect(),
            W3Prune if self.gated => PRUNES
                .iter()
                .map(|&p| QuantChoice { w3_prune: p, ..c0 })
                .collect(),
            ActClip => ACT_CLIPS
                .iter()
                .map(|&a| QuantChoice { act_clip: a, ..c0 })
                .collect(),
            W2Top => W2_TOPS
                .iter()
                .map(|&t| QuantChoice { w2_top: t, ..c0 })
                .collect(),
            W2L1 => W2_L1S
                .iter()
                .map(|&b| QuantChoice { w2_l1: b, ..c0 })
                .collect(),
            SwitchNumerator if self.switch_gating => (1..=self.switch_cap)
                .map(|n| QuantChoice {
                    switch_numerator: Some(n),
                    ..c0
                })
                .collect(),
            RouterCenter if self.routed => [true, false]
                .iter()
                .map(|&b| QuantChoice {
                    router_center: b,
                    ..c0
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The search's state: the best candidate so far and how many candidates were scored.
struct Search<'c, 'a> {
    ctx: &'c Context<'a>,
    best_choice: QuantChoice,
    best: (QuantizedClassifier, QuantizeReport),
    best_score: f64,
    candidates: usize,
}

impl<'c, 'a> Search<'c, 'a> {
    /// Starts from the default choice, scored.
    fn start(ctx: &'c Context<'a>) -> Result<Self> {
        let best_choice = QuantChoice::default();
        let (best, best_score) = ctx.score(&best_choice)?;
        Ok(Search {
            ctx,
            best_choice,
            best,
            best_score,
            candidates: 1,
        })
    }

    /// One pass: one coordinate at a time, each from the best choice so far.
    fn pass(&mut self, space: &Space) -> Result<()> {
        for coord in COORDINATES {
            let tries = space.tries(coord, self.best_choice, self.best.1.logit_zero_point);
            for c in tries {
                // The best may have changed within this coordinate: skip it, not the start.
                if c == self.best_choice {
                    continue;
                }
                self.candidates += 1;
                let (r, s) = self.ctx.score(&c)?;
                if s > self.best_score + MIN_GAIN {
                    self.best_score = s;
                    self.best_choice = c;
                    self.best = r;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> (QuantizedClassifier, QuantizeReport) {
        let (q, mut report) = self.best;
        report.candidates = self.candidates;
        (q, report)
    }
}

/// Quantizes with explicit options; returns the classifier and what was chosen.
///
/// A declared choice is used as is when the options allow it (a quantization-aware trained
/// model is only accurate under its own quantization); without a search, the defaults of
/// [`QuantChoice`] are used.
pub fn quantize_with(
    model: &FloatMoeModel,
    opts: &QuantizeOptions,
    calibration: &[Vec<f32>],
) -> Result<(QuantizedClassifier, QuantizeReport)> {
    if let (true, Some(c)) = (opts.use_model_choice, &model.quantization) {
        // trained for worst-case first-stage ranges: quantized as it was trained
        let trained = QuantizeOptions {
            calibrated_headroom: None,
            input_bits: None,
            output_digits: false,
            gate_bits: super::options::TRAINED_GATE_BITS,
            first_stage_shift: super::options::TRAINED_FIRST_STAGE_SHIFT,
            activation_reads: 1,
            ..opts.clone()
        };
        return Context::new(model, &trained, calibration)?.build_scored(c, 1);
    }
    let ctx = Context::new(model, opts, calibration)?;
    if !opts.search {
        return ctx.build_scored(&QuantChoice::default(), 1);
    }
    let space = Space::of(model, opts);
    let mut search = Search::start(&ctx)?;
    for _pass in 0..MAX_PASSES {
        let before = search.best_score;
        search.pass(&space)?;
        if search.best_score <= before + MIN_GAIN {
            break;
        }
    }
    Ok(search.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpertCount, HiddenDim, ModelDim, MoeConfig, SplitMix, TopK};

    /// The search tries router prunes for a tournament router and never for a pairwise one,
    /// whose comparisons see the router weights themselves; a searched pairwise quantization
    /// keeps every router weight.
    #[test]
    fn a_pairwise_router_is_never_pruned() {
        let config = MoeConfig {
            d: ModelDim(8),
            h: HiddenDim(8),
            experts: ExpertCount(4),
            top_k: TopK(1),
            ffn: FfnKind::GatedSilu,
            gating: Gating::SoftmaxSelected,
        };
        let model = FloatMoeModel::random(config, 1.0, 5);
        let opts = |pairwise_routing| QuantizeOptions {
            pairwise_routing,
            ..QuantizeOptions::for_message_bits(4)
        };
        for pairwise in [false, true] {
            let tries = Space::of(&model, &opts(pairwise)).tries(
                Coordinate::RouterPrune,
                QuantChoice::default(),
                0,
            );
            assert_eq!(tries.len(), if pairwise { 0 } else { PRUNES.len() });
        }
        let mut rng = SplitMix(3);
        let records: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..8).map(|_| rng.gaussian() as f32).collect())
            .collect();
        let (q, report) = quantize_with(&model, &opts(true), &records).unwrap();
        assert!(q.moe.pairwise_routing);
        assert_eq!(report.choice.router_prune, 0.0);
        assert_eq!(report.router_zeroed, 0.0);
    }
}
