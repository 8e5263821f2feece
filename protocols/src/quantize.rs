//! Float MoE block -> [`QuantizedClassifier`], calibrated on sample inputs.
//!
//! The integer semantics are fixed by [`crate::quant`] and [`crate::model`]: every requantizing
//! read is a power-of-two shift chosen from the **worst-case** accumulator range over all
//! inputs in the signed m-bit box, not from typical values. So the real value of one read step
//! of a weight row is about (row's worst-case range) / 2^m whatever the integer scale: what
//! decides resolution is how small a row's L1 norm is next to its typical output. The
//! quantizer therefore works row by row from worst-case ranges, and chooses, by calibration:
//!
//! - **first stage** (router, W1, W3; one shared shift `s`): each group gets the finest scale
//!   at which its worst-case row still fits the `s + m`-bit read. Router rows share one scale
//!   (the argmax must not change), W1 rows share one (it is the activation's input scale),
//!   W3 rows each get their own (the scale folds into W2's column). Small weights can be
//!   rounded to zero (`*_prune`, relative to the row's largest weight) to shrink the L1 norm;
//! - **activation**: `act_out_scale` places the largest reachable activation at the top of
//!   the factor range, times a clipping factor `act_clip` <= 1;
//! - **second stage** (W2): one scale for all experts, chosen by the integer value `w2_top`
//!   of the largest weight. The PBS that reads `W2 a` only keeps its failure probability when
//!   the row's 2-norm stays within the preset's `max_norm2` (divided by sqrt 2 for gated FFNs,
//!   whose hidden values are differences of two PBS outputs), so rows that exceed it lose their
//!   smallest weights and weights are clipped to `floor(sqrt(limit))`;
//! - **router**: the rows are first centred (the per-input median over experts is subtracted:
//!   every logit moves by the same amount, so routing and gates are unchanged, while the L1
//!   norms and thus the read step shrink); then the logit zero point that places the typical
//!   top logit at the top of `[0, logit_max]`, and (Switch/Qwen gating) the softmax numerator.
//!
//! A model that declares the quantization it was trained for (`"veilmoe": {"quantization":
//! ...}` in config.json, see [`QuantChoice`]) is quantized with exactly that choice: a
//! quantization-aware trained model is accurate under its own quantization, and a search on
//! calibration data where it already agrees ~100% with its float self has no signal to improve
//! it.
//!
//! The input zero point is folded into the first-stage biases, so the block needs no zero
//! point of its own. The search is coordinate descent maximising agreement with the float
//! model (argmax of the head when there is one) minus a small relative output error.

use crate::checkpoint::FloatMoeModel;
use crate::classifier::{predicted_class, Head, InputQuantizer, QuantizedClassifier};
use crate::digits::Dataset;
use crate::error::{ProtocolError, Result};
use crate::model::{ExpertWeights, FfnKind, Gating, QuantParams, QuantizedMoe};
use crate::quant::Activation;
use crate::reference::Rounding;
use rayon::prelude::*;
use std::fmt;

/// What the quantizer may do.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Bits a PBS reads (the preset's message bits).
    pub message_bits: u32,
    /// The preset's noise budget: largest 2-norm of a dot product over PBS outputs.
    pub max_norm2: f64,
    /// Shift of the first-stage reads: the first-stage weights get about this many bits of
    /// precision (wider costs nothing in noise: the packed inputs are fresh encryptions).
    pub first_stage_shift: u32,
    /// Gate bits (see [`QuantParams::gate_bits`]).
    pub gate_bits: u32,
    /// Search the choices by calibration (`false`: the defaults of [`QuantChoice`]).
    pub search: bool,
    /// Use the choice a model declares (`FloatMoeModel::quantization`) instead of searching:
    /// a quantization-aware trained model is only accurate under the quantization it was
    /// trained for.
    pub use_model_choice: bool,
    /// Calibration records used to score a candidate (evenly spaced; all for the input range).
    pub max_scored: usize,
}

impl QuantizeOptions {
    /// Options for a preset reading `message_bits`, with the 4-bit presets' noise budget
    /// (`max_norm2 = 5`).
    pub fn for_message_bits(message_bits: u32) -> QuantizeOptions {
        QuantizeOptions {
            message_bits,
            max_norm2: 5.0,
            first_stage_shift: 10,
            gate_bits: 3,
            search: true,
            use_model_choice: true,
            max_scored: 1000,
        }
    }
    /// Options for a preset (its message bits and noise budget).
    pub fn for_preset(p: &veilmoe_engine::Preset) -> QuantizeOptions {
        QuantizeOptions {
            max_norm2: p.max_norm2,
            ..QuantizeOptions::for_message_bits(p.message_bits)
        }
    }
}

/// The choices the search makes (see the module docs). A model trained for one quantization
/// (quantization-aware training) declares it in config.json (`"veilmoe": {"quantization":
/// {...}}`, these field names); [`quantize_with`] then uses it as is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantChoice {
    pub router_prune: f64,
    pub w1_prune: f64,
    pub w3_prune: f64,
    /// Fraction of the largest reachable activation mapped to the top of the factor range.
    pub act_clip: f64,
    /// Integer value of the largest W2 weight (before clipping to the noise limit).
    pub w2_top: f64,
    /// Largest L1 norm of an integer W2 row (`None`: only the noise limit). The output read's
    /// shift follows the worst row's L1 norm, so a small budget keeps the read fine.
    pub w2_l1: Option<i64>,
    /// Subtract the per-input median over experts from the router rows first (see
    /// `center_router`: the routing does not change, the read step shrinks).
    pub router_center: bool,
    /// `None`: placed from calibration.
    pub logit_zero_point: Option<i64>,
    /// Switch/Qwen gating numerator (`None`: half the cap).
    pub switch_numerator: Option<i64>,
}

impl Default for QuantChoice {
    fn default() -> Self {
        QuantChoice {
            router_prune: 0.0,
            w1_prune: 0.0,
            w3_prune: 0.0,
            act_clip: 1.0,
            w2_top: 3.0,
            w2_l1: None,
            router_center: true,
            logit_zero_point: None,
            switch_numerator: None,
        }
    }
}

/// What the quantizer chose, stage by stage, and how well the result tracks the float model
/// on the calibration records.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub choice: QuantChoice,
    /// Raw calibration range mapped onto the signed m-bit inputs.
    pub input_range: (f32, f32),
    pub input: InputQuantizer,
    /// Real (block-input) value of one input step.
    pub input_step: f64,
    pub input_width: u32,
    pub input_shift: u32,
    /// Real value of one router read step (= `logit_scale`).
    pub router_step: f64,
    pub router_zeroed: f64,
    pub logit_zero_point: i64,
    pub act_in_scale: f64,
    pub w1_zeroed: f64,
    /// Real value of one W3 read step, per expert and hidden unit (gated FFNs).
    pub w3_steps: Vec<Vec<f64>>,
    pub w3_zeroed: f64,
    pub act_out_scale: f64,
    /// Real value of one unit of W2's integer weights.
    pub w2_scale: f64,
    pub w2_max_abs: i64,
    pub w2_zeroed: f64,
    /// Largest squared 2-norm of a W2 row, and the limit the noise budget allows.
    pub w2_norm2_sq: i64,
    pub w2_norm2_sq_limit: i64,
    pub output_width: u32,
    pub output_shift: u32,
    pub x_scale: f64,
    pub y_scale: f64,
    pub switch_numerator: i64,
    /// Calibration records scored.
    pub scored: usize,
    /// Fraction of scored records where the quantized argmax equals the float one (head only).
    pub agreement: Option<f64>,
    /// Fraction of scored records routed to the same experts as the float model.
    pub routing_agreement: f64,
    /// Relative squared error of the outputs, `sum (q - f)^2 / sum (f - mean f)^2`.
    pub relative_error: f64,
    /// Candidates evaluated by the search.
    pub candidates: usize,
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |v: f64| 100.0 * v;
        writeln!(
            f,
            "input:    raw [{}, {}] -> signed m-bit, {:.4} raw per step, zero point {} (block step {:.5})",
            self.input_range.0, self.input_range.1, self.input.input_scale, self.input.input_zero_point, self.input_step
        )?;
        writeln!(
            f,
            "stage 1:  input width {} bits, read shift {} (router, W1, W3 share it)",
            self.input_width, self.input_shift
        )?;
        writeln!(
            f,
            "router:   {}step {:.4}, {:.1}% weights zeroed (prune {:.2}), logit zero point {}",
            if self.choice.router_center {
                "centred, "
            } else {
                ""
            },
            self.router_step,
            pct(self.router_zeroed),
            self.choice.router_prune,
            self.logit_zero_point
        )?;
        writeln!(
            f,
            "W1:       act_in_scale {:.4}, {:.1}% weights zeroed (prune {:.2})",
            self.act_in_scale,
            pct(self.w1_zeroed),
            self.choice.w1_prune
        )?;
        if !self.w3_steps.is_empty() {
            let all: Vec<f64> = self.w3_steps.iter().flatten().copied().collect();
            let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = all.iter().copied().fold(0.0, f64::max);
            writeln!(
                f,
                "W3:       per-row steps {lo:.4}..{hi:.4}, {:.1}% weights zeroed (prune {:.2})",
                pct(self.w3_zeroed),
                self.choice.w3_prune
            )?;
        }
        writeln!(
            f,
            "act:      act_out_scale {:.4} (clip {:.2})",
            self.act_out_scale, self.choice.act_clip
        )?;
        writeln!(
            f,
            "W2:       scale {:.5}, largest |w| {} (target {:.1}), row L1 budget {}, {:.1}% zeroed, row norm^2 <= {} (limit {})",
            self.w2_scale,
            self.w2_max_abs,
            self.choice.w2_top,
            self.choice.w2_l1.map_or("none".to_string(), |b| b.to_string()),
            pct(self.w2_zeroed),
            self.w2_norm2_sq,
            self.w2_norm2_sq_limit
        )?;
        writeln!(
            f,
            "output:   width {} bits, read shift {}, y_scale {:.5}, x_scale {:.5}",
            self.output_width, self.output_shift, self.y_scale, self.x_scale
        )?;
        write!(
            f,
            "calibration: {} records, {} candidates; routing agreement {:.1}%, ",
            self.scored,
            self.candidates,
            pct(self.routing_agreement)
        )?;
        if let Some(a) = self.agreement {
            write!(f, "argmax agreement {:.1}%, ", pct(a))?;
        }
        write!(f, "relative output error {:.4}", self.relative_error)
    }
}

/// Quantizes `model` for a preset reading `message_bits`, calibrated on raw `calibration`
/// records (searching the choices; see [`quantize_with`] for the options and the report).
pub fn quantize(
    model: &FloatMoeModel,
    message_bits: u32,
    calibration: &[Vec<f32>],
) -> Result<QuantizedClassifier> {
    quantize_with(
        model,
        &QuantizeOptions::for_message_bits(message_bits),
        calibration,
    )
    .map(|(q, _)| q)
}

/// Quantizes with explicit options; returns the classifier and what was chosen.
pub fn quantize_with(
    model: &FloatMoeModel,
    opts: &QuantizeOptions,
    calibration: &[Vec<f32>],
) -> Result<(QuantizedClassifier, QuantizeReport)> {
    let ctx = Context::new(model, opts, calibration)?;
    if let (true, Some(c)) = (opts.use_model_choice, &model.quantization) {
        return ctx.build_scored(c, 1);
    }
    if !opts.search {
        return ctx.build_scored(&QuantChoice::default(), 1);
    }
    let mut best_choice = QuantChoice::default();
    let (mut best, mut best_score) = ctx.score(&best_choice)?;
    let mut candidates = 1;
    let quant = QuantParams::for_message_bits(opts.message_bits);
    let gated = model.config.ffn == FfnKind::GatedSilu;
    let routed = model.config.experts.0 > 1;
    let prunes = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3];
    for _pass in 0..2 {
        let before = best_score;
        // One coordinate at a time, each from the best choice so far.
        for coord in 0..9 {
            let c0 = best_choice;
            let tries: Vec<QuantChoice> = match coord {
                0 if routed => {
                    let z0 = best.1.logit_zero_point;
                    (z0 - 6..=z0 + 6)
                        .map(|z| QuantChoice {
                            logit_zero_point: Some(z),
                            ..c0
                        })
                        .collect()
                }
                1 if routed => prunes
                    .iter()
                    .map(|&p| QuantChoice {
                        router_prune: p,
                        ..c0
                    })
                    .collect(),
                2 => prunes
                    .iter()
                    .map(|&p| QuantChoice { w1_prune: p, ..c0 })
                    .collect(),
                3 if gated => prunes
                    .iter()
                    .map(|&p| QuantChoice { w3_prune: p, ..c0 })
                    .collect(),
                4 => [1.0, 0.85, 0.7, 0.55, 0.45, 0.35, 0.25]
                    .iter()
                    .map(|&a| QuantChoice { act_clip: a, ..c0 })
                    .collect(),
                5 => [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0]
                    .iter()
                    .map(|&t| QuantChoice { w2_top: t, ..c0 })
                    .collect(),
                6 => [
                    Some(1),
                    Some(2),
                    Some(3),
                    Some(4),
                    Some(6),
                    Some(8),
                    Some(12),
                    None,
                ]
                .iter()
                .map(|&b| QuantChoice { w2_l1: b, ..c0 })
                .collect(),
                8 if routed => [true, false]
                    .iter()
                    .map(|&b| QuantChoice {
                        router_center: b,
                        ..c0
                    })
                    .collect(),
                7 if model.config.gating == Gating::SoftmaxThenTopK => (1..=quant.switch_cap())
                    .map(|n| QuantChoice {
                        switch_numerator: Some(n),
                        ..c0
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for c in tries {
                if c == best_choice {
                    continue;
                }
                candidates += 1;
                let (r, s) = ctx.score(&c)?;
                if s > best_score + 1e-12 {
                    best_score = s;
                    best_choice = c;
                    best = r;
                }
            }
        }
        if best_score <= before + 1e-12 {
            break;
        }
    }
    let (q, mut report) = best;
    report.candidates = candidates;
    Ok((q, report))
}

/// Quantizes with a fixed choice (no search): what a quantization-aware training loop calls
/// to get the integer model and its real steps for its current float weights.
pub fn quantize_fixed(
    model: &FloatMoeModel,
    opts: &QuantizeOptions,
    choice: &QuantChoice,
    calibration: &[Vec<f32>],
) -> Result<(QuantizedClassifier, QuantizeReport)> {
    Context::new(model, opts, calibration)?.build_scored(choice, 1)
}

/// Everything that does not depend on the choice.
struct Context<'a> {
    model: &'a FloatMoeModel,
    opts: &'a QuantizeOptions,
    input: InputQuantizer,
    input_range: (f32, f32),
    input_step: f64,
    /// Scored records and the float model's outputs and routes on them.
    scored: Vec<&'a Vec<f32>>,
    float_out: Vec<Vec<f32>>,
    float_routes: Vec<Vec<usize>>,
    /// Quantization parameters before the per-choice scales are set.
    quant: QuantParams,
}

/// One first-stage group, quantized.
struct Rows {
    w: Vec<i64>,
    b: Vec<i64>,
    /// real value of one accumulator unit, per row
    sigma: Vec<f64>,
    zeroed: usize,
}

impl<'a> Context<'a> {
    fn new(
        model: &'a FloatMoeModel,
        opts: &'a QuantizeOptions,
        calibration: &'a [Vec<f32>],
    ) -> Result<Context<'a>> {
        model.validate().map_err(ProtocolError::Weights)?;
        if !(3..=16).contains(&opts.message_bits) {
            return Err(ProtocolError::Config(format!(
                "message bits must be 3 to 16, got {}",
                opts.message_bits
            )));
        }
        if calibration.is_empty() {
            return Err(ProtocolError::Config(
                "quantization needs at least one calibration record".into(),
            ));
        }
        let d = model.features();
        if let Some(r) = calibration.iter().find(|r| r.len() != d) {
            return Err(ProtocolError::Config(format!(
                "a calibration record has {} features, the model takes {d}",
                r.len()
            )));
        }
        if calibration.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ProtocolError::Config(
                "calibration records must be finite".into(),
            ));
        }
        let quant = QuantParams {
            gate_bits: opts.gate_bits,
            ..QuantParams::for_message_bits(opts.message_bits)
        };
        let lo = calibration
            .iter()
            .flatten()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let hi = calibration
            .iter()
            .flatten()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let levels = ((1i64 << opts.message_bits) - 1) as f64;
        let raw_step = if hi > lo {
            (hi as f64 - lo as f64) / levels
        } else {
            1.0
        };
        let zp = quant.input_min() - (lo as f64 / raw_step).round() as i64;
        let input = InputQuantizer {
            input_scale: raw_step,
            input_zero_point: zp,
        };
        let n = calibration.len();
        let take = opts.max_scored.clamp(1, n);
        let scored: Vec<&Vec<f32>> = (0..take).map(|i| &calibration[i * n / take]).collect();
        let float_out: Vec<Vec<f32>> = scored.par_iter().map(|r| model.forward(r)).collect();
        let float_routes: Vec<Vec<usize>> = scored
            .par_iter()
            .map(|r| model.route(&model.model_input(r)).0)
            .collect();
        Ok(Context {
            model,
            opts,
            input,
            input_range: (lo, hi),
            input_step: raw_step * model.input_scale,
            scored,
            float_out,
            float_routes,
            quant,
        })
    }

    /// Quantizes the rows of `w` (`[rows, d]` real weights, optional real biases) so that every
    /// row's worst-case accumulator fits the read box of shift `s`: with one scale for all
    /// rows (`shared`) or one per row.
    fn first_stage(
        &self,
        w: &ndarray::Array2<f32>,
        b: Option<&ndarray::Array1<f32>>,
        prune: f64,
        shared: bool,
    ) -> Rows {
        let q = &self.quant;
        let s = self.opts.first_stage_shift;
        let (qmin, qmax) = (q.input_min(), q.input_max());
        let zp = self.input.input_zero_point;
        let (tlo, thi) = ((qmin - zp) as f64, (qmax - zp) as f64);
        let top = (q.input_max() as f64) * 2f64.powi(s as i32);
        let bottom = (-q.input_min() as f64) * 2f64.powi(s as i32);
        let (rows, cols) = w.dim();
        // Real weights per input step, pruned.
        let mut real: Vec<f64> = Vec::with_capacity(rows * cols);
        let mut zeroed = 0;
        for r in 0..rows {
            let row = w.row(r);
            let m = row.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
            for &v in row.iter() {
                let v = v as f64;
                if v == 0.0 || v.abs() < prune * m {
                    zeroed += 1;
                    real.push(0.0);
                } else {
                    real.push(v * self.input_step);
                }
            }
        }
        let bias = |r: usize| b.map_or(0.0, |b| b[r] as f64);
        // Smallest scale at which row r's worst case fits.
        let need: Vec<f64> = (0..rows)
            .map(|r| {
                let row = &real[r * cols..(r + 1) * cols];
                let hi: f64 = bias(r) + row.iter().map(|&v| (v * tlo).max(v * thi)).sum::<f64>();
                let lo: f64 = bias(r) + row.iter().map(|&v| (v * tlo).min(v * thi)).sum::<f64>();
                (hi / top).max(-lo / bottom).max(1e-30)
            })
            .collect();
        let shared_sigma = need.iter().copied().fold(1e-30, f64::max);
        let mut sigma: Vec<f64> = if shared {
            vec![shared_sigma; rows]
        } else {
            need
        };
        let mut wi = vec![0i64; rows * cols];
        let mut bi = vec![0i64; rows];
        let box_hi = q.input_max() as i128 * (1i128 << s);
        let box_lo = q.input_min() as i128 * (1i128 << s);
        for _ in 0..200 {
            let mut refit = vec![false; rows];
            for r in 0..rows {
                let row = &real[r * cols..(r + 1) * cols];
                let mut sum = 0i64;
                let (mut lo, mut hi) = (0i128, 0i128);
                for (c, &v) in row.iter().enumerate() {
                    let x = (v / sigma[r]).round() as i64;
                    wi[r * cols + c] = x;
                    sum += x;
                    let (a, z) = (x as i128 * qmin as i128, x as i128 * qmax as i128);
                    lo += a.min(z);
                    hi += a.max(z);
                }
                bi[r] = (bias(r) / sigma[r]).round() as i64 - zp * sum;
                lo += bi[r] as i128;
                hi += bi[r] as i128;
                refit[r] = hi > box_hi || lo < box_lo;
            }
            if !refit.iter().any(|&f| f) {
                break;
            }
            if shared {
                sigma.iter_mut().for_each(|s| *s *= 1.002);
            } else {
                for r in 0..rows {
                    if refit[r] {
                        sigma[r] *= 1.002;
                    }
                }
            }
        }
        Rows {
            w: wi,
            b: bi,
            sigma,
            zeroed,
        }
    }

    /// Builds the classifier for `choice`.
    fn build(&self, choice: &QuantChoice) -> Result<(QuantizedClassifier, QuantizeReport)> {
        let m = self.model;
        let (d, h, e) = (m.config.d.0, m.config.h.0, m.config.experts.0);
        let gated = m.config.ffn == FfnKind::GatedSilu;
        let mut quant = self.quant;

        let (centered, centered_bias) = if choice.router_center {
            center_router(&m.router, m.router_bias.as_ref())
        } else {
            (m.router.clone(), m.router_bias.clone())
        };
        let router = self.first_stage(&centered, centered_bias.as_ref(), choice.router_prune, true);
        // W1 (and W3) of all experts, stacked: `[E * h, d]`.
        let stack = |w: Vec<ndarray::ArrayView2<'_, f32>>| {
            ndarray::concatenate(ndarray::Axis(0), &w)
                .map_err(|e| ProtocolError::Weights(e.to_string()))
        };
        let stack_b = |b: Vec<Option<&ndarray::Array1<f32>>>| {
            b.iter().any(|b| b.is_some()).then(|| {
                b.iter()
                    .flat_map(|b| b.map_or(vec![0.0; h], |b| b.to_vec()))
                    .collect::<ndarray::Array1<f32>>()
            })
        };
        let w1_all = stack(m.experts.iter().map(|x| x.w1.view()).collect())?;
        let b1_all = stack_b(m.experts.iter().map(|x| x.b1.as_ref()).collect());
        let w1 = self.first_stage(&w1_all, b1_all.as_ref(), choice.w1_prune, true);
        let w3 = if gated {
            let zero = ndarray::Array2::<f32>::zeros((h, d));
            let w3_all = stack(
                m.experts
                    .iter()
                    .map(|x| x.w3.as_ref().unwrap_or(&zero).view())
                    .collect(),
            )?;
            let b3_all = stack_b(m.experts.iter().map(|x| x.b3.as_ref()).collect());
            Some(self.first_stage(&w3_all, b3_all.as_ref(), choice.w3_prune, false))
        } else {
            None
        };
        let has_b1 = w1.b.iter().any(|&b| b != 0) || b1_all.is_some();
        let has_b3 = w3.as_ref().is_some_and(|w3| w3.b.iter().any(|&b| b != 0));
        let mut experts: Vec<ExpertWeights> = (0..e)
            .map(|i| ExpertWeights {
                w1: w1.w[i * h * d..(i + 1) * h * d].to_vec(),
                b1: has_b1.then(|| w1.b[i * h..(i + 1) * h].to_vec()),
                w3: w3
                    .as_ref()
                    .map(|w3| w3.w[i * h * d..(i + 1) * h * d].to_vec()),
                b3: if has_b3 {
                    w3.as_ref().map(|w3| w3.b[i * h..(i + 1) * h].to_vec())
                } else {
                    None
                },
                w2: vec![0; d * h],
                b2: None,
            })
            .collect();
        let has_rb = router.b.iter().any(|&b| b != 0);
        let mut moe = QuantizedMoe {
            config: m.config,
            quant,
            router: router.w.clone(),
            router_bias: has_rb.then(|| router.b.clone()),
            experts: experts.clone(),
        };
        moe.validate()?;
        let s = moe.input_shift();
        let p2s = 2f64.powi(s as i32);
        let router_step = router.sigma[0] * p2s;
        let act_in = w1.sigma[0] * p2s;
        quant.act_in_scale = act_in;
        quant.logit_scale = router_step;

        // Activation output scale.
        let act = match m.config.ffn {
            FfnKind::GatedSilu => Activation::Silu,
            FfnKind::Plain(a) => a,
        };
        let top_in = quant.input_max() as f64 * act_in;
        let out_hi = if gated {
            quant.factor_range().1
        } else {
            quant.input_max()
        } as f64;
        let reach = act
            .apply(top_in)
            .max(act.apply(-(quant.input_min() as f64) * act_in))
            .max(1e-12);
        quant.act_out_scale = (choice.act_clip * reach / out_hi).max(1e-12);

        // Second stage: real value of one unit of the hidden activation, per unit.
        let w3_steps: Vec<Vec<f64>> = match &w3 {
            Some(w3) => (0..e)
                .map(|i| (0..h).map(|j| w3.sigma[i * h + j] * p2s).collect())
                .collect(),
            None => Vec::new(),
        };
        let unit = |i: usize, j: usize| -> f64 {
            quant.act_out_scale * w3_steps.get(i).map_or(1.0, |r| r[j])
        };
        let mut max_real = 0f64;
        for (i, x) in m.experts.iter().enumerate() {
            for r in 0..d {
                for j in 0..h {
                    max_real = max_real.max((x.w2[[r, j]] as f64 * unit(i, j)).abs());
                }
            }
        }
        let sigma2 = (max_real / choice.w2_top.max(1e-6)).max(1e-30);
        let gated_factor = if gated { 2.0 } else { 1.0 };
        let limit = (self.opts.max_norm2 * self.opts.max_norm2 / gated_factor).floor() as i64;
        let clip = ((limit as f64).sqrt().floor() as i64).max(1);
        let (mut w2_zeroed, mut w2_norm, mut w2_max) = (0usize, 0i64, 0i64);
        for (i, x) in m.experts.iter().enumerate() {
            let mut w2 = vec![0i64; d * h];
            for r in 0..d {
                let reals: Vec<f64> = (0..h).map(|j| x.w2[[r, j]] as f64 * unit(i, j)).collect();
                let mut row: Vec<i64> = reals
                    .iter()
                    .map(|&v| ((v / sigma2).round() as i64).clamp(-clip, clip))
                    .collect();
                // Drop the smallest weights until the row meets the noise budget.
                let mut order: Vec<usize> = (0..h).collect();
                order.sort_by(|&a, &b| reals[a].abs().total_cmp(&reals[b].abs()));
                let l1_budget = choice.w2_l1.unwrap_or(i64::MAX).max(1);
                let mut k = 0;
                while k < h
                    && (row.iter().map(|v| v * v).sum::<i64>() > limit
                        || row.iter().map(|v| v.abs()).sum::<i64>() > l1_budget)
                {
                    let others: i64 =
                        row.iter().map(|v| v.abs()).sum::<i64>() - row[order[k]].abs();
                    if others == 0 {
                        // the last weight: clip it to the budget rather than drop the row
                        let w = row[order[k]];
                        row[order[k]] = w.signum() * w.abs().min(l1_budget);
                        break;
                    }
                    row[order[k]] = 0;
                    k += 1;
                }
                w2_zeroed += row.iter().filter(|&&v| v == 0).count();
                w2_norm = w2_norm.max(row.iter().map(|v| v * v).sum());
                w2_max = w2_max.max(row.iter().map(|v| v.abs()).max().unwrap_or(0));
                w2[r * h..(r + 1) * h].copy_from_slice(&row);
            }
            experts[i].w2 = w2;
            experts[i].b2 = x.b2.as_ref().map(|b| {
                b.iter()
                    .map(|&v| (v as f64 / sigma2).round() as i64)
                    .collect()
            });
        }

        // Router zero point: place the typical top read at the top of the logit range.
        moe.quant = quant;
        moe.experts = experts;
        let logit_zero_point = match choice.logit_zero_point {
            Some(z) => z,
            None => {
                let mut tops: Vec<i64> = self
                    .scored
                    .iter()
                    .filter_map(|r| {
                        let xq = self.quantize_record(r);
                        moe.router_accumulators(&xq)
                            .iter()
                            .map(|&a| crate::quant::round_shift(a, s))
                            .max()
                    })
                    .collect();
                tops.sort_unstable();
                let p = tops.get(tops.len() * 9 / 10).copied().unwrap_or(0);
                quant.logit_max() - p
            }
        };
        quant.logit_zero_point = logit_zero_point;
        let cap = quant.switch_cap();
        quant.switch_numerator = choice
            .switch_numerator
            .unwrap_or((cap + 1) / 2)
            .clamp(1, cap);
        moe.quant = quant;
        moe.validate()?;

        let output_shift = moe.expert_output_shift();
        let mut y_scale = sigma2 * 2f64.powi(output_shift as i32);
        if !moe.constant_gates() {
            y_scale /= quant.gate_max() as f64;
        }
        let x_scale = if m.residual { self.input_step } else { 0.0 };
        let head = m.head.as_ref().map(|hd| Head {
            weight: hd.weight.iter().copied().collect(),
            bias: hd
                .bias
                .as_ref()
                .map_or(vec![0.0; hd.weight.nrows()], |b| b.to_vec()),
        });
        let zeroed_frac = |z: usize, n: usize| z as f64 / n.max(1) as f64;
        let report = QuantizeReport {
            choice: *choice,
            input_range: self.input_range,
            input: self.input,
            input_step: self.input_step,
            input_width: moe.input_width(),
            input_shift: s,
            router_step,
            router_zeroed: zeroed_frac(router.zeroed, e * d),
            logit_zero_point,
            act_in_scale: act_in,
            w1_zeroed: zeroed_frac(w1.zeroed, e * h * d),
            w3_zeroed: w3
                .as_ref()
                .map_or(0.0, |w| zeroed_frac(w.zeroed, e * h * d)),
            w3_steps,
            act_out_scale: quant.act_out_scale,
            w2_scale: sigma2,
            w2_max_abs: w2_max,
            w2_zeroed: zeroed_frac(w2_zeroed, e * d * h),
            w2_norm2_sq: w2_norm,
            w2_norm2_sq_limit: limit,
            output_width: moe.expert_output_width(),
            output_shift,
            x_scale,
            y_scale,
            switch_numerator: quant.switch_numerator,
            scored: 0,
            agreement: None,
            routing_agreement: 0.0,
            relative_error: 0.0,
            candidates: 0,
        };
        let q = QuantizedClassifier {
            moe,
            input: self.input,
            x_scale,
            y_scale,
            head,
        };
        q.validate()?;
        Ok((q, report))
    }

    fn quantize_record(&self, raw: &[f32]) -> Vec<i64> {
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        raw.iter()
            .map(|&v| {
                ((v as f64 / self.input.input_scale).round() as i64 + self.input.input_zero_point)
                    .clamp(lo, hi)
            })
            .collect()
    }

    /// Builds and scores a candidate: (classifier, report) and the score (higher is better).
    fn score(&self, choice: &QuantChoice) -> Result<((QuantizedClassifier, QuantizeReport), f64)> {
        let (q, mut report) = self.build(choice)?;
        let results: Vec<(Vec<f64>, Vec<usize>)> = self
            .scored
            .par_iter()
            .map(|r| {
                let xq = q.quantize_input(r)?;
                let out = q.moe.reference(&xq, &mut Rounding::Exact);
                Ok((q.outputs_from(&xq, &out.y), out.selected))
            })
            .collect::<Result<_>>()?;
        let n = results.len();
        let mut agree = 0usize;
        let mut routes = 0usize;
        let (mut err, mut var) = (0f64, 0f64);
        for ((out, sel), (f, fr)) in results
            .iter()
            .zip(self.float_out.iter().zip(&self.float_routes))
        {
            let ff: Vec<f64> = f.iter().map(|&v| v as f64).collect();
            agree += (predicted_class(out) == predicted_class(&ff)) as usize;
            routes += (sel == fr) as usize;
            let mean = ff.iter().sum::<f64>() / ff.len().max(1) as f64;
            for (a, b) in out.iter().zip(&ff) {
                err += (a - b) * (a - b);
                var += (b - mean) * (b - mean);
            }
        }
        let rel = if var > 0.0 { err / var } else { err };
        report.scored = n;
        report.routing_agreement = routes as f64 / n.max(1) as f64;
        report.relative_error = rel;
        let score = if self.model.head.is_some() {
            let a = agree as f64 / n.max(1) as f64;
            report.agreement = Some(a);
            a - 0.05 * rel.min(10.0)
        } else {
            -rel
        };
        Ok(((q, report), score))
    }

    fn build_scored(
        &self,
        choice: &QuantChoice,
        candidates: usize,
    ) -> Result<(QuantizedClassifier, QuantizeReport)> {
        let ((q, mut r), _) = self.score(choice)?;
        r.candidates = candidates;
        Ok((q, r))
    }
}

/// Subtracts from every router row the per-input median over experts (and from the biases
/// their median): every logit moves by the same amount for any input, so the top-k and the
/// gates (softmax over selected or over all logits) do not change, while the rows' L1 norms,
/// which set the router's read step, shrink and the logits are centred for their clip.
fn center_router(
    w: &ndarray::Array2<f32>,
    b: Option<&ndarray::Array1<f32>>,
) -> (ndarray::Array2<f32>, Option<ndarray::Array1<f32>>) {
    let median = |mut v: Vec<f32>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    };
    let mut out = w.clone();
    for mut col in out.columns_mut() {
        let c = median(col.to_vec());
        col.mapv_inplace(|v| v - c);
    }
    let bias = b.map(|b| {
        let c = median(b.to_vec());
        b.mapv(|v| v - c)
    });
    (out, bias)
}

/// Float and quantized accuracy of a classifier on labelled records, and their agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccuracyReport {
    pub records: usize,
    pub float_correct: usize,
    pub quantized_correct: usize,
    /// Records where the float and quantized predictions are the same class.
    pub agreement: usize,
}

impl AccuracyReport {
    pub fn float_accuracy(&self) -> f64 {
        self.float_correct as f64 / self.records.max(1) as f64
    }
    pub fn quantized_accuracy(&self) -> f64 {
        self.quantized_correct as f64 / self.records.max(1) as f64
    }
    pub fn agreement_rate(&self) -> f64 {
        self.agreement as f64 / self.records.max(1) as f64
    }
}

impl fmt::Display for AccuracyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records: float {:.2}%, quantized {:.2}%, agreement {:.2}%",
            self.records,
            100.0 * self.float_accuracy(),
            100.0 * self.quantized_accuracy(),
            100.0 * self.agreement_rate()
        )
    }
}

/// Predictions of the quantized classifier's plaintext reference on every record, in order
/// (`rounding` is used sequentially, so a simulated rounding is reproducible from its seed).
pub fn quantized_predictions(
    q: &QuantizedClassifier,
    features: &[Vec<f32>],
    rounding: &mut Rounding,
) -> Result<Vec<usize>> {
    features
        .iter()
        .map(|r| Ok(predicted_class(&q.reference_outputs(r, rounding)?)))
        .collect()
}

/// Agreement of the simulated encrypted path with the exact integer reference: for each seed,
/// the number of records of `features` whose prediction under
/// [`Rounding::simulate`]`(preset, seed)` (the encrypted path's floor-or-ceil reads near box
/// edges) equals the prediction under [`Rounding::Exact`]. Each seed's rounding runs over the
/// records in order, as [`quantized_predictions`] does, so the counts are reproducible; the
/// seeds run in parallel. `features.len()` minus a count is the number of records that would
/// decrypt, in that simulation, to a class other than the plaintext reference's.
pub fn rounding_agreement(
    q: &QuantizedClassifier,
    features: &[Vec<f32>],
    preset: &veilmoe_engine::Preset,
    seeds: &[u64],
) -> Result<Vec<usize>> {
    let exact = quantized_predictions(q, features, &mut Rounding::Exact)?;
    seeds
        .par_iter()
        .map(|&seed| {
            let sim = quantized_predictions(
                q,
                features,
                &mut Rounding::simulate_reads(preset, q.moe.quant.message_bits, seed),
            )?;
            Ok(exact.iter().zip(&sim).filter(|(a, b)| a == b).count())
        })
        .collect()
}

/// Accuracy of the float model on a labelled data set (0 on an empty one).
pub fn float_accuracy(model: &FloatMoeModel, data: &Dataset) -> f64 {
    let correct = data
        .features
        .par_iter()
        .zip(&data.labels)
        .filter(|(r, &l)| model.predict(r) == l)
        .count();
    correct as f64 / data.len().max(1) as f64
}

/// Float accuracy, quantized accuracy (under `rounding`: exact, or the simulation of a
/// preset's approximate reads) and their agreement on a labelled data set.
pub fn evaluate_accuracy(
    float: &FloatMoeModel,
    quantized: &QuantizedClassifier,
    data: &Dataset,
    rounding: &mut Rounding,
) -> Result<AccuracyReport> {
    if float.head.is_none() || quantized.head.is_none() {
        return Err(ProtocolError::Config(
            "accuracy needs a model with a classification head".into(),
        ));
    }
    let qp = quantized_predictions(quantized, &data.features, rounding)?;
    let fp: Vec<usize> = data.features.par_iter().map(|r| float.predict(r)).collect();
    let mut rep = AccuracyReport {
        records: data.len(),
        float_correct: 0,
        quantized_correct: 0,
        agreement: 0,
    };
    for ((f, q), &l) in fp.iter().zip(&qp).zip(&data.labels) {
        rep.float_correct += (*f == l) as usize;
        rep.quantized_correct += (*q == l) as usize;
        rep.agreement += (f == q) as usize;
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::top_k_f32;

    #[test]
    fn centring_the_router_keeps_every_routing() {
        let w =
            ndarray::Array2::from_shape_fn((5, 6), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = ndarray::Array1::from(vec![0.5f32, -1.0, 2.0, 0.0, 1.5]);
        let (c, cb) = center_router(&w, Some(&b));
        let cb = cb.unwrap();
        for t in 0..50 {
            let x =
                ndarray::Array1::from_shape_fn(6, |j| ((t * 13 + j * 5) % 9) as f32 / 4.0 - 1.0);
            let r0 = (w.dot(&x) + &b).to_vec();
            let r1 = (c.dot(&x) + &cb).to_vec();
            // the same shift for every logit: same top-k, same softmax
            let shift = r0[0] - r1[0];
            assert!(r0
                .iter()
                .zip(&r1)
                .all(|(a, b)| (a - b - shift).abs() < 1e-4));
            assert_eq!(top_k_f32(&r0, 2), top_k_f32(&r1, 2));
        }
        let l1 = |a: &ndarray::Array2<f32>| a.iter().map(|v| v.abs()).sum::<f32>();
        assert!(l1(&c) <= l1(&w));
    }
}
