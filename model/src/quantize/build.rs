//! The quantization of one fixed choice ([`Context::build`]): first stage, activation scale,
//! second stage, router zero point, output scales, in the order each needs the previous.

use super::context::Context;
use super::first_stage::{center_router, Rows};
use super::options::QuantChoice;
use super::report::QuantizeReport;
use super::second_stage::{act_out_scale, SecondStage};
use crate::arch::FfnKind;
use crate::classifier::{Head, QuantizedClassifier};
use crate::error::{ModelError, Result};
use crate::output_digits::OutputDigits;
use crate::quantized::{ExpertWeights, QuantizedMoe, SharedExpert};

/// The first-stage groups of one candidate, quantized with the shared shift.
struct FirstStage {
    router: Rows,
    /// W1 of all experts, stacked `[E * h, d]`, then the shared expert's `[hs, d]`.
    w1: Rows,
    /// W3 of all experts, stacked the same way (gated FFNs).
    w3: Option<Rows>,
    /// The shared expert's gate row, at its own scale.
    shared_gate: Option<Rows>,
    /// Whether any expert has a float b1 (then every expert gets an integer b1).
    float_b1: bool,
}

impl Context<'_> {
    /// Builds the classifier for `choice`.
    pub(super) fn build(
        &self,
        choice: &QuantChoice,
    ) -> Result<(QuantizedClassifier, QuantizeReport)> {
        let m = self.model;
        let (d, h, e) = (m.config.d.0, m.config.h.0, m.config.experts.0);
        let mut quant = self.quant;

        let first = self.first_stages(choice)?;
        let hs = m.shared.as_ref().map(|s| s.hidden());
        let mut experts = expert_shells(&first, e, h, d, hs);
        // The shared expert's shell is the last one (quantized with the routed experts).
        let mut moe = QuantizedMoe {
            config: m.config,
            quant,
            router: first.router.w.clone(),
            router_bias: first
                .router
                .b
                .iter()
                .any(|&b| b != 0)
                .then(|| first.router.b.clone()),
            experts: experts[..e].to_vec(),
            shared: None,
            calibrated_shift: self
                .opts
                .calibrated_headroom
                .map(|_| self.first_stage_shift()),
            calibrated_output_width: None,
            output_digits: None,
            linear_in_product: self.opts.linear_in_product && m.config.ffn == FfnKind::GatedSilu,
            pairwise_routing: self.opts.pairwise_routing,
        };
        moe.shared = self.shared_expert(&first, &experts, 1.0);
        moe.validate()?;
        // The real steps of the first-stage reads follow from the shift the integer rows need.
        let s = moe.input_shift();
        let p2s = 2f64.powi(s as i32);
        let router_step = first.router.sigma[0] * p2s;
        let act_in = first.w1.sigma[0] * p2s;
        quant.act_in_scale = act_in;
        quant.logit_scale = router_step;
        quant.act_out_scale = act_out_scale(m.config.ffn, &quant, act_in, choice.act_clip);

        // Second stage: real value of one unit of the hidden activation, per unit (of the
        // routed experts, then the shared one).
        let sizes: Vec<usize> = std::iter::repeat_n(h, e).chain(hs).collect();
        let w3_steps: Vec<Vec<f64>> = match &first.w3 {
            Some(w3) => {
                let mut at = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        let row = (at..at + n).map(|j| w3.sigma[j] * p2s).collect();
                        at += n;
                        row
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        // The activation reads add up: one unit of the hidden sum is 1/K of an output step.
        let hidden_unit = quant.act_out_scale / quant.activation_reads as f64;
        let second = self.second_stage(choice, hidden_unit, &w3_steps, &mut experts);

        moe.quant = quant;
        moe.shared = self.shared_expert(&first, &experts, p2s);
        experts.truncate(e);
        moe.experts = experts;
        let logit_zero_point = match choice.logit_zero_point {
            Some(z) => z,
            None => self.placed_logit_zero_point(&moe, s),
        };
        quant.logit_zero_point = logit_zero_point;
        let cap = quant.switch_cap();
        quant.switch_numerator = choice
            .switch_numerator
            .unwrap_or((cap + 1) / 2)
            .clamp(1, cap);
        moe.quant = quant;
        if let Some(headroom) = self.opts.calibrated_headroom {
            moe.calibrated_output_width = Some(self.calibrated_output_width(&moe, headroom));
        }
        if second.digit_shift > 0 {
            moe.output_digits = Some(self.output_digits(&moe, second.digit_shift));
        }
        moe.validate()?;

        let output_shift = moe.expert_output_shift();
        let mut y_scale = second.sigma2 * 2f64.powi(output_shift as i32);
        if !moe.output_is_slot() {
            y_scale /= quant.gate_max() as f64;
        }
        let x_scale = if m.residual { self.input_step } else { 0.0 };
        let report = self.report(
            choice,
            &moe,
            &first,
            &second,
            w3_steps,
            (s, router_step, act_in),
            (output_shift, x_scale, y_scale),
        );
        let head = m.head.as_ref().map(|hd| Head {
            weight: hd.weight.iter().copied().collect(),
            bias: hd
                .bias
                .as_ref()
                .map_or(vec![0.0; hd.weight.nrows()], |b| b.to_vec()),
        });
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

    /// Quantizes the router (centred first when the choice says so), W1 and W3 of all experts,
    /// each stacked into one group. Router and W1 rows share one scale (the argmax must not
    /// change; W1's scale is the activation's input scale), W3 rows get one each (the scale
    /// folds into W2's columns).
    fn first_stages(&self, choice: &QuantChoice) -> Result<FirstStage> {
        let m = self.model;
        let (centered, centered_bias) = if choice.router_center {
            center_router(&m.router, m.router_bias.as_ref())
        } else {
            (m.router.clone(), m.router_bias.clone())
        };
        let q = &self.quant;
        let read_box = (q.read_min(), q.read_max());
        // A linear factor read inside the product is never clipped: its rows fit the factor range.
        let w3_box = if self.opts.linear_in_product {
            q.factor_range()
        } else {
            read_box
        };
        let router = self.first_stage(
            &centered,
            centered_bias.as_ref(),
            choice.router_prune,
            true,
            read_box,
        );
        // W1 (and W3) of all experts, stacked: `[E * h, d]`.
        let stack = |w: Vec<ndarray::ArrayView2<'_, f32>>| {
            ndarray::concatenate(ndarray::Axis(0), &w)
                .map_err(|e| ModelError::Weights(e.to_string()))
        };
        // A missing bias is a zero bias once another expert has one.
        let stack_b = |b: Vec<(Option<&ndarray::Array1<f32>>, usize)>| {
            b.iter().any(|(b, _)| b.is_some()).then(|| {
                b.iter()
                    .flat_map(|(b, n)| b.map_or(vec![0.0; *n], |b| b.to_vec()))
                    .collect::<ndarray::Array1<f32>>()
            })
        };
        // The routed experts, then the shared one: one W1 group (one activation input scale).
        let ffns: Vec<&crate::checkpoint::FloatExpert> = m.ffns().collect();
        let w1_all = stack(ffns.iter().map(|x| x.w1.view()).collect())?;
        let b1_all = stack_b(ffns.iter().map(|x| (x.b1.as_ref(), x.w1.nrows())).collect());
        let w1 = self.first_stage(
            &w1_all,
            b1_all.as_ref(),
            choice.w1_prune,
            true,
            q.activation_box(),
        );
        let w3 = if m.config.ffn == FfnKind::GatedSilu {
            let zeros: Vec<ndarray::Array2<f32>> = ffns
                .iter()
                .map(|x| ndarray::Array2::<f32>::zeros(x.w1.dim()))
                .collect();
            let w3_all = stack(
                ffns.iter()
                    .zip(&zeros)
                    .map(|(x, z)| x.w3.as_ref().unwrap_or(z).view())
                    .collect(),
            )?;
            let b3_all = stack_b(ffns.iter().map(|x| (x.b3.as_ref(), x.w1.nrows())).collect());
            Some(self.first_stage(&w3_all, b3_all.as_ref(), choice.w3_prune, false, w3_box))
        } else {
            None
        };
        let shared_gate = m.shared.as_ref().map(|s| {
            let row = s.gate.clone().insert_axis(ndarray::Axis(0));
            self.first_stage(&row, None, 0.0, true, read_box)
        });
        Ok(FirstStage {
            router,
            w1,
            w3,
            shared_gate,
            float_b1: b1_all.is_some(),
        })
    }

    /// The quantized shared expert from its shell (the last of `shells`, after the routed
    /// experts) and its gate row; `p2s` is `2^s` of the layer's first-stage shift (the gate's
    /// read step is its row scale times that).
    fn shared_expert(
        &self,
        first: &FirstStage,
        shells: &[ExpertWeights],
        p2s: f64,
    ) -> Option<SharedExpert> {
        let sh = self.model.shared.as_ref()?;
        let gate = first.shared_gate.as_ref()?;
        Some(SharedExpert {
            h: sh.hidden(),
            weights: shells.last()?.clone(),
            gate: gate.w.clone(),
            gate_bias: gate.b[0],
            gate_scale: gate.sigma[0] * p2s,
        })
    }

    /// The logit zero point that places the typical top router read (the 90th percentile over
    /// the scored records of the largest read, whose shift is `s`) at the top of
    /// `[0, logit_max]`: logits clip at both ends, and only the top ones decide the routing.
    fn placed_logit_zero_point(&self, moe: &QuantizedMoe, s: u32) -> i64 {
        let tops: Vec<i64> = self
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
        placed_logit_zero_point(tops, moe.quant.logit_max())
    }

    /// W2's digits at shift `k`, with the encoding width of a digit's output: from the
    /// calibrated range of every digit output over the scored records (see
    /// [`Context::calibrated_width`]), or the worst case.
    fn output_digits(&self, moe: &QuantizedMoe, k: u32) -> OutputDigits {
        let mut split = moe.clone();
        split.output_digits = Some(OutputDigits { shift: k, width: 1 });
        let worst = split.encrypted_output_range();
        let width = match self.opts.calibrated_headroom {
            None => crate::quant::read_width(worst.0, worst.1, moe.quant.message_bits)
                .max(hidden_width(moe)),
            Some(headroom) => {
                self.calibrated_width(moe, headroom, worst, |w, a| split.encrypted_output(w, a))
            }
        };
        OutputDigits { shift: k, width }
    }

    /// The expert outputs' encoding width from their range over the scored records (see
    /// [`Context::calibrated_width`]).
    fn calibrated_output_width(&self, moe: &QuantizedMoe, headroom: f64) -> u32 {
        let d = moe.config.d.0;
        self.calibrated_width(moe, headroom, moe.expert_output_range(), |w, a| {
            crate::reference::matvec(&w.w2, w.b2.as_deref(), d, a)
        })
    }

    /// The encoding width of the outputs `outputs(ffn, hidden)` from their range over the
    /// scored records (every FFN of the layer, routed or shared, on every record) times
    /// `headroom`: never wider than the worst case `worst` unless the hidden activations
    /// (which share the encoding) or the read bits need more.
    fn calibrated_width(
        &self,
        moe: &QuantizedMoe,
        headroom: f64,
        worst: (i128, i128),
        outputs: impl Fn(&ExpertWeights, &[i64]) -> Vec<i64> + Sync,
    ) -> u32 {
        use rayon::prelude::*;
        let (lo, hi) = self
            .scored
            .par_iter()
            .map(|r| {
                let x = self.quantize_record(r);
                let mut range = (0i64, 0i64);
                for (w, h) in moe.ffns() {
                    let a = moe.ffn_hidden(w, h, &x, &mut crate::Rounding::Exact);
                    for v in outputs(w, &a) {
                        range = (range.0.min(v), range.1.max(v));
                    }
                }
                range
            })
            .reduce(|| (0, 0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        let scaled = |v: i64| (v as f64 * headroom).round() as i128;
        let worst_width = crate::quant::read_width(worst.0, worst.1, moe.quant.message_bits);
        crate::quant::hold_width(scaled(lo), scaled(hi))
            .min(worst_width)
            .max(hidden_width(moe))
    }

    /// The report of a built candidate (its calibration scores are filled in by `score`).
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        choice: &QuantChoice,
        moe: &QuantizedMoe,
        first: &FirstStage,
        second: &SecondStage,
        w3_steps: Vec<Vec<f64>>,
        (input_shift, router_step, act_in): (u32, f64, f64),
        (output_shift, x_scale, y_scale): (u32, f64, f64),
    ) -> QuantizeReport {
        let c = &self.model.config;
        let (d, e) = (c.d.0, c.experts.0);
        let zeroed_frac = |z: usize, n: usize| z as f64 / n.max(1) as f64;
        QuantizeReport {
            choice: *choice,
            input_range: self.input_range,
            input: self.input,
            input_step: self.input_step,
            input_width: moe.input_width(),
            input_shift,
            calibrated_headroom: self.opts.calibrated_headroom,
            overflowing_records: self
                .scored
                .iter()
                .filter(|r| moe.overflows(&self.quantize_record(r)) > 0)
                .count(),
            router_step,
            router_zeroed: zeroed_frac(first.router.zeroed, e * d),
            logit_zero_point: moe.quant.logit_zero_point,
            act_in_scale: act_in,
            w1_zeroed: zeroed_frac(first.w1.zeroed, first.w1.w.len()),
            w3_zeroed: first
                .w3
                .as_ref()
                .map_or(0.0, |w| zeroed_frac(w.zeroed, w.w.len())),
            w3_steps,
            linear_in_product: moe.linear_in_product,
            pairwise_routing: moe.pairwise_routing,
            act_out_scale: moe.quant.act_out_scale,
            activation_reads: moe.quant.activation_reads,
            w2_scale: second.sigma2,
            w2_max_abs: second.max_abs,
            w2_zeroed: zeroed_frac(second.zeroed, moe.ffns().map(|(_, h)| d * h).sum()),
            w2_norm2_sq: second.norm2_sq,
            w2_norm2_sq_limit: second.limit,
            output_digits: moe.output_digits,
            output_width: moe.expert_output_width(),
            output_shift,
            x_scale,
            y_scale,
            switch_numerator: moe.quant.switch_numerator,
            scored: 0,
            agreement: None,
            routing_agreement: 0.0,
            relative_error: 0.0,
            candidates: 0,
        }
    }
}

/// The experts' first-stage weights, cut from the stacked groups, with an empty second stage
/// (W2 depends on scales that the first stage's shift decides): the `e` routed experts of `h`
/// units, then the shared expert of `hs` units if there is one. An expert gets a b1 (b3) when
/// any expert had one or the input zero point folded into a non-zero one.
fn expert_shells(
    first: &FirstStage,
    e: usize,
    h: usize,
    d: usize,
    hs: Option<usize>,
) -> Vec<ExpertWeights> {
    let w1 = &first.w1;
    let w3 = first.w3.as_ref();
    let has_b1 = w1.b.iter().any(|&b| b != 0) || first.float_b1;
    let has_b3 = w3.is_some_and(|w3| w3.b.iter().any(|&b| b != 0));
    let mut row = 0;
    std::iter::repeat_n(h, e)
        .chain(hs)
        .map(|n| {
            let (rows, weights) = (row..row + n, row * d..(row + n) * d);
            row += n;
            ExpertWeights {
                w1: w1.w[weights.clone()].to_vec(),
                b1: has_b1.then(|| w1.b[rows.clone()].to_vec()),
                w3: w3.map(|w3| w3.w[weights].to_vec()),
                b3: if has_b3 {
                    w3.map(|w3| w3.b[rows].to_vec())
                } else {
                    None
                },
                w2: vec![0; d * n],
                b2: None,
            }
        })
        .collect()
}

/// The logit zero point that places the 90th percentile of `tops` (each record's largest router
/// read) at `logit_max`: logits clip at both ends, and only the top ones decide the routing.
/// One rule for the MoE router and the pool router.
fn placed_logit_zero_point(mut tops: Vec<i64>, logit_max: i64) -> i64 {
    tops.sort_unstable();
    let p = tops.get(tops.len() * 9 / 10).copied().unwrap_or(0);
    logit_max - p
}

/// The narrowest output encoding a model allows: its hidden activations (which share it) and
/// the read bits.
fn hidden_width(moe: &QuantizedMoe) -> u32 {
    let (lo, hi) = moe.quant.hidden_range(moe.config.ffn);
    crate::quant::hold_width(lo as i128, hi as i128).max(moe.quant.message_bits)
}
