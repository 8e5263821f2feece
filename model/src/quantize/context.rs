//! [`Context`]: what every candidate of one quantization shares (the checked calibration set,
//! the input quantizer, the float model's outputs on the scored records), and the scoring of a
//! candidate against the float model.

use super::options::{QuantChoice, QuantizeOptions};
use super::report::QuantizeReport;
use crate::checkpoint::FloatMoeModel;
use crate::classifier::{InputQuantizer, QuantizedClassifier};
use crate::error::{ModelError, Result};
use crate::math::argmax;
use crate::quant::QuantParams;
use crate::reference::Rounding;
use rayon::prelude::*;

/// Everything that does not depend on the choice.
pub(super) struct Context<'a> {
    pub(super) model: &'a FloatMoeModel,
    pub(super) opts: &'a QuantizeOptions,
    pub(super) input: InputQuantizer,
    pub(super) input_range: (f32, f32),
    pub(super) input_step: f64,
    /// Scored records and the float model's outputs and routes on them.
    pub(super) scored: Vec<&'a Vec<f32>>,
    /// The scored records as the client quantizes them, less the input zero point: what the
    /// calibrated first-stage ranges are measured on.
    pub(super) centred_inputs: Vec<Vec<f64>>,
    float_out: Vec<Vec<f32>>,
    float_routes: Vec<Vec<usize>>,
    /// Quantization parameters before the per-choice scales are set.
    pub(super) quant: QuantParams,
}

/// How a candidate's outputs compare with the float model's on the scored records.
struct Comparison {
    /// Records whose argmax equals the float argmax.
    agree: usize,
    /// Records routed to the same experts.
    routes: usize,
    /// `sum (q - f)^2 / sum (f - mean f)^2` (the bare squared error when the float outputs
    /// are constant).
    relative_error: f64,
}

impl<'a> Context<'a> {
    /// Checks the inputs, maps the calibration range onto the signed m-bit input box, and runs
    /// the float model once on the scored records (every candidate is compared with them).
    pub(super) fn new(
        model: &'a FloatMoeModel,
        opts: &'a QuantizeOptions,
        calibration: &'a [Vec<f32>],
    ) -> Result<Context<'a>> {
        check_inputs(model, opts, calibration)?;
        let quant = QuantParams {
            gate_bits: opts.gate_bits,
            activation_reads: opts.activation_reads,
            input_bits: opts.input_bits.unwrap_or(opts.message_bits),
            ..QuantParams::for_message_bits(opts.message_bits)
        };
        let (lo, hi) = calibration_range(calibration);
        let (input, raw_step) = input_quantizer(&quant, lo, hi);
        // Evenly spaced records: the calibration set is often in file (or class) order.
        let n = calibration.len();
        let take = opts.max_scored.clamp(1, n);
        let scored: Vec<&Vec<f32>> = (0..take).map(|i| &calibration[i * n / take]).collect();
        let float_out: Vec<Vec<f32>> = scored.par_iter().map(|r| model.forward(r)).collect();
        let float_routes: Vec<Vec<usize>> = scored
            .par_iter()
            .map(|r| model.route(&model.model_input(r)).0)
            .collect();
        let mut ctx = Context {
            model,
            opts,
            input,
            input_range: (lo, hi),
            input_step: raw_step * model.input_scale,
            scored,
            centred_inputs: Vec::new(),
            float_out,
            float_routes,
            quant,
        };
        let zp = ctx.input.input_zero_point;
        ctx.centred_inputs = ctx
            .scored
            .iter()
            .map(|r| {
                ctx.quantize_record(r)
                    .into_iter()
                    .map(|v| (v - zp) as f64)
                    .collect()
            })
            .collect();
        Ok(ctx)
    }

    /// The first-stage read shift: the options' shift for inputs of a read's width, plus the
    /// input's extra bits (the weights keep their precision against the wider input).
    pub(super) fn first_stage_shift(&self) -> u32 {
        self.opts.first_stage_shift + self.quant.extra_input_bits()
    }

    /// A raw record as the client quantizes it (the same arithmetic as
    /// [`QuantizedClassifier::quantize_input`], before a classifier exists).
    pub(super) fn quantize_record(&self, raw: &[f32]) -> Vec<i64> {
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        raw.iter()
            .map(|&v| {
                ((v as f64 / self.input.input_scale).round() as i64 + self.input.input_zero_point)
                    .clamp(lo, hi)
            })
            .collect()
    }

    /// Builds and scores a candidate: (classifier, report) and the score (higher is better).
    ///
    /// With a head the score is the argmax agreement with the float model, less a small
    /// penalty on the relative output error (it breaks ties between candidates that agree
    /// equally, in favour of the one that tracks the logits best); without a head it is the
    /// negated relative error.
    pub(super) fn score(
        &self,
        choice: &QuantChoice,
    ) -> Result<((QuantizedClassifier, QuantizeReport), f64)> {
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
        let cmp = self.compare(&results);
        let rel = cmp.relative_error;
        report.scored = n;
        report.routing_agreement = cmp.routes as f64 / n.max(1) as f64;
        report.relative_error = rel;
        let score = if self.model.head.is_some() {
            let a = cmp.agree as f64 / n.max(1) as f64;
            report.agreement = Some(a);
            a - 0.05 * rel.min(10.0)
        } else {
            -rel
        };
        Ok(((q, report), score))
    }

    /// Compares a candidate's (outputs, selected experts) on the scored records with the float
    /// model's, record by record in order (the error sums are accumulated in that order).
    fn compare(&self, results: &[(Vec<f64>, Vec<usize>)]) -> Comparison {
        let mut agree = 0usize;
        let mut routes = 0usize;
        let (mut err, mut var) = (0f64, 0f64);
        for ((out, sel), (f, fr)) in results
            .iter()
            .zip(self.float_out.iter().zip(&self.float_routes))
        {
            let ff: Vec<f64> = f.iter().map(|&v| v as f64).collect();
            agree += (argmax(out) == argmax(&ff)) as usize;
            routes += (sel == fr) as usize;
            let mean = ff.iter().sum::<f64>() / ff.len().max(1) as f64;
            for (a, b) in out.iter().zip(&ff) {
                err += (a - b) * (a - b);
                var += (b - mean) * (b - mean);
            }
        }
        Comparison {
            agree,
            routes,
            relative_error: if var > 0.0 { err / var } else { err },
        }
    }

    /// Builds and scores one choice, and records how many candidates led to it.
    pub(super) fn build_scored(
        &self,
        choice: &QuantChoice,
        candidates: usize,
    ) -> Result<(QuantizedClassifier, QuantizeReport)> {
        let ((q, mut r), _) = self.score(choice)?;
        r.candidates = candidates;
        Ok((q, r))
    }
}

/// Refuses what cannot be quantized, in this order: invalid weights, an unsupported read
/// width, no calibration record, a record of the wrong length, a non-finite value.
fn check_inputs(
    model: &FloatMoeModel,
    opts: &QuantizeOptions,
    calibration: &[Vec<f32>],
) -> Result<()> {
    model.validate().map_err(ModelError::Weights)?;
    if !(3..=16).contains(&opts.message_bits) {
        return Err(ModelError::Config(format!(
            "message bits must be 3 to 16, got {}",
            opts.message_bits
        )));
    }
    if let Some(b) = opts.input_bits {
        let max = crate::quant::MAX_INPUT_BITS;
        if !(opts.message_bits..=max).contains(&b) {
            return Err(ModelError::Config(format!(
                "input bits must be {} (the read's bits) to {max}, got {b}",
                opts.message_bits
            )));
        }
    }
    let noise = opts.wide_output_noise;
    if !(noise > 0.0 && noise <= super::options::MAX_WIDE_OUTPUT_NOISE) {
        return Err(ModelError::Config(format!(
            "the wide outputs' noise factor must be in (0, {}], got {noise}",
            super::options::MAX_WIDE_OUTPUT_NOISE
        )));
    }
    if calibration.is_empty() {
        return Err(ModelError::Config(
            "quantization needs at least one calibration record".into(),
        ));
    }
    let d = model.features();
    if let Some(r) = calibration.iter().find(|r| r.len() != d) {
        return Err(ModelError::Config(format!(
            "a calibration record has {} features, the model takes {d}",
            r.len()
        )));
    }
    if calibration.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ModelError::Config(
            "calibration records must be finite".into(),
        ));
    }
    Ok(())
}

/// Smallest and largest raw value over all calibration records.
fn calibration_range(calibration: &[Vec<f32>]) -> (f32, f32) {
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
    (lo, hi)
}

/// The input quantizer that maps the raw range `[lo, hi]` onto the `2^input_bits` signed input
/// levels (the raw minimum onto the box's minimum), and its raw step. A constant calibration
/// set gets a step of 1 rather than a division by zero.
fn input_quantizer(quant: &QuantParams, lo: f32, hi: f32) -> (InputQuantizer, f64) {
    let levels = ((1i64 << quant.input_bits) - 1) as f64;
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
    (input, raw_step)
}
