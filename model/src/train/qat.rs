//! The quantization-aware phase: before every batch the weights are quantized with a fixed
//! choice, and the exact integer reference's loss (integer routing, integer reads) is added to
//! the float loss, its gradients passing straight through the roundings to the float weights.

use super::driver::{block_input, zero_grad, Trainer, BATCH};
use super::float_phase::{balance_grad, float_record};
use super::optim::{augment, cosine, shuffle, Adam};
use super::params::{
    back_head_w2, first_stage_grad, head, silu, silu_grad, softmax, to_model, Layout, D,
    INPUT_SCALE,
};
use super::QatEpoch;
use crate::classifier::QuantizedClassifier;
use crate::error::Result;
use crate::math::argmax;
use crate::quant::round_shift;
use crate::quantize::{
    float_accuracy, quantize_fixed, QuantChoice, QuantizeOptions, QuantizeReport,
};
use crate::reference::Rounding;

/// Peak learning rate of the quantization-aware phase (cosine schedule).
const QAT_LR: f64 = 1e-3;
/// Epochs between progress reports.
const REPORT_EVERY: usize = 10;
/// Calibration records scored when the weights are quantized before a batch: the choice is
/// fixed, so the score only fills the report, and the input range uses every record anyway.
const QAT_SCORED: usize = 64;

/// Real steps of the current quantization.
pub(super) struct Steps {
    /// Shift of the first-stage reads.
    pub(super) shift: u32,
    /// Real value of one router read step.
    pub(super) router: f64,
    /// Real value of one W3 read step, per expert and hidden unit.
    pub(super) w3: Vec<Vec<f64>>,
}

impl Steps {
    pub(super) fn of(rep: &QuantizeReport) -> Steps {
        Steps {
            shift: rep.input_shift,
            router: rep.router_step,
            w3: rep.w3_steps.clone(),
        }
    }
}

/// How the expert-output read rounds in [`q_expert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputRead {
    /// As the exact reference reads it (round to nearest).
    Rounded,
    /// Not rounded at all (diagnosis only: what the output read's rounding costs).
    Unrounded,
}

/// A record as the quantized block sees it: the integer input, and its real value.
pub(super) struct QInput {
    pub(super) xq: Vec<i64>,
    /// `(xq - zero point) * input step`: the block's real input after quantization.
    pub(super) x_hat: Vec<f64>,
}

impl QInput {
    pub(super) fn new(qc: &QuantizedClassifier, raw: &[f32]) -> Result<QInput> {
        let xq = qc.quantize_input(raw)?;
        let zp = qc.input.input_zero_point;
        let step = qc.input.input_scale * INPUT_SCALE;
        let x_hat: Vec<f64> = xq.iter().map(|&v| (v - zp) as f64 * step).collect();
        Ok(QInput { xq, x_hat })
    }

    /// The integer router's logits (exact reads).
    pub(super) fn logits(&self, qc: &QuantizedClassifier) -> Vec<i64> {
        qc.moe
            .logits(&qc.moe.router_accumulators(&self.xq), &mut Rounding::Exact)
    }
}

/// What one expert's integer forward keeps for the backward pass.
pub(super) struct QTrace {
    /// real hidden activations fed to W2
    a: Vec<f64>,
    /// straight-through gradient factors of the silu and linear branches
    s_real: Vec<f64>,
    v_real: Vec<f64>,
    ds_du: Vec<f64>,
    v_pass: Vec<bool>,
    /// The head's input: residual plus expert output, in real units.
    z: Vec<f64>,
    /// Class probabilities of the trained head on `z`, and the cross-entropy.
    pub(super) q: Vec<f64>,
    loss: f64,
}

/// Quantized (exact integer reference) forward of expert `e` on `input`, with the steps of
/// the current quantization; the head is the parameters' own (f64).
pub(super) fn q_expert(
    (l, p): (&Layout, &[f64]),
    qc: &QuantizedClassifier,
    steps: &Steps,
    e: usize,
    input: &QInput,
    label: usize,
    read: OutputRead,
) -> QTrace {
    let m = &qc.moe;
    let qp = &m.quant;
    let w = &m.experts[e];
    let xq = &input.xq;
    let (flo, fhi) = qp.factor_range();
    let h = l.h;
    let mut a_int = vec![0i64; h];
    let (mut a, mut s_real, mut v_real, mut ds_du, mut v_pass) = (
        vec![0.0; h],
        vec![0.0; h],
        vec![0.0; h],
        vec![0.0; h],
        vec![false; h],
    );
    for j in 0..h {
        let row = &w.w1[j * D..(j + 1) * D];
        let acc_u: i64 =
            row.iter().zip(xq).map(|(a, b)| a * b).sum::<i64>() + w.b1.as_ref().map_or(0, |b| b[j]);
        let w3r = &w.w3.as_ref().expect("gated")[j * D..(j + 1) * D];
        let acc_v: i64 =
            w3r.iter().zip(xq).map(|(a, b)| a * b).sum::<i64>() + w.b3.as_ref().map_or(0, |b| b[j]);
        let qu = round_shift(acc_u, steps.shift);
        let qv = round_shift(acc_v, steps.shift);
        let sq = qp.gated_silu(qu);
        let lq = qp.gated_linear(qv);
        a_int[j] = sq * lq;
        let t3 = steps.w3[e][j];
        s_real[j] = sq as f64 * qp.act_out_scale;
        v_real[j] = lq as f64 * t3;
        a[j] = s_real[j] * v_real[j];
        // straight-through: pass where the table did not clip
        let u_real = (0..D)
            .map(|k| l.w1(p, e, j, k) * input.x_hat[k])
            .sum::<f64>();
        let unclipped = (silu(qu as f64 * qp.act_in_scale) / qp.act_out_scale).round() as i64;
        ds_du[j] = if unclipped > flo && unclipped < fhi {
            silu_grad(u_real)
        } else {
            0.0
        };
        v_pass[j] = qv >= flo && qv <= fhi;
    }
    let z = head_input(qc, e, xq, &a_int, read);
    let (q, loss) = head(l, p, &z, label);
    QTrace {
        a,
        s_real,
        v_real,
        ds_du,
        v_pass,
        z,
        q,
        loss,
    }
}

/// The head's input from expert `e`'s integer hidden activations: the exact residual input plus
/// the requantized expert output, each in real units (`x_scale`, `y_scale`).
fn head_input(
    qc: &QuantizedClassifier,
    e: usize,
    xq: &[i64],
    a_int: &[i64],
    read: OutputRead,
) -> Vec<f64> {
    let m = &qc.moe;
    let w = &m.experts[e];
    let h = a_int.len();
    let s2 = m.expert_output_shift();
    let zp = qc.input.input_zero_point;
    (0..D)
        .map(|i| {
            let acc: i64 = w.w2[i * h..(i + 1) * h]
                .iter()
                .zip(a_int)
                .map(|(a, b)| a * b)
                .sum::<i64>()
                + w.b2.as_ref().map_or(0, |b| b[i]);
            let o = match read {
                OutputRead::Unrounded => acc as f64 / 2f64.powi(s2 as i32),
                OutputRead::Rounded => round_shift(acc, s2) as f64,
            };
            (xq[i] - zp) as f64 * qc.x_scale + o * qc.y_scale
        })
        .collect()
}

/// The weights of one record's quantized losses.
pub(super) struct QatWeights {
    /// Of the selected expert's quantized loss.
    pub(super) quant: f64,
    /// Of the router's term through the integer logits (0: none).
    pub(super) router: f64,
    /// Relative weight of the experts one router read rounding could select instead.
    pub(super) router_alt: f64,
}

/// One QAT record: the quantized (integer, hard-routed) loss with weight `w.quant`, gradients
/// to the selected expert and the head, and with weight `w.quant * w.router_alt` the same for
/// every expert that the encrypted path could select instead (one router read rounding the
/// other way: its logit is within one step of the top); returns whether the quantized
/// prediction was right.
pub(super) fn qat_record(
    l: &Layout,
    p: &[f64],
    g: &mut [f64],
    qc: &QuantizedClassifier,
    steps: &Steps,
    (raw, label): (&[f32], usize),
    w: &QatWeights,
) -> Result<bool> {
    let input = QInput::new(qc, raw)?;
    let logits = input.logits(qc);
    let sel = argmax(&logits);
    let traces: Vec<QTrace> = (0..l.e)
        .map(|e| q_expert((l, p), qc, steps, e, &input, label, OutputRead::Rounded))
        .collect();
    let correct = argmax(&traces[sel].q) == label;
    if w.router > 0.0 {
        router_grad_int(l, g, qc, steps, (&input, &logits), &traces, w.router);
    }
    for (e, te) in traces.iter().enumerate() {
        let we = if e == sel {
            w.quant
        } else if w.router_alt > 0.0 && logits[e] + 1 >= logits[sel] {
            w.quant * w.router_alt
        } else {
            continue;
        };
        let g_a = back_head_w2((l, p), g, e, (&te.q, label), &te.z, &te.a, we);
        let g_u: Vec<f64> = (0..l.h)
            .map(|j| g_a[j] * te.v_real[j] * te.ds_du[j])
            .collect();
        let g_v: Vec<f64> = (0..l.h)
            .map(|j| {
                if te.v_pass[j] {
                    g_a[j] * te.s_real[j]
                } else {
                    0.0
                }
            })
            .collect();
        first_stage_grad(l, g, e, &input.x_hat, &g_u, &g_v);
    }
    Ok(correct)
}

/// Router through the integer logits (straight-through the read and the clip, with weight
/// `weight`): softmax over logit steps, pulled towards the experts with the lowest quantized
/// loss. A logit clipped at either end of `[0, logit_max]` passes no gradient.
fn router_grad_int(
    l: &Layout,
    g: &mut [f64],
    qc: &QuantizedClassifier,
    steps: &Steps,
    (input, logits): (&QInput, &[i64]),
    traces: &[QTrace],
    weight: f64,
) {
    let acc = qc.moe.router_accumulators(&input.xq);
    let pq = softmax(&logits.iter().map(|&l| l as f64).collect::<Vec<_>>());
    let lbar: f64 = pq.iter().zip(traces).map(|(p, t)| p * t.loss).sum();
    let qp = &qc.moe.quant;
    for e in 0..l.e {
        let raw_logit = round_shift(acc[e], steps.shift) + qp.logit_zero_point;
        if raw_logit < 0 || raw_logit > qp.logit_max() {
            continue;
        }
        let gr = weight * pq[e] * (traces[e].loss - lbar) / steps.router;
        for k in 0..D {
            g[l.wr + e * D + k] += gr * input.x_hat[k];
        }
    }
}

impl Trainer<'_> {
    /// Runs the quantization-aware phase for `choice` (quantized with `opts`, scoring fewer
    /// records); returns the progress at the reported epochs (also logged).
    pub(super) fn qat_phase(
        &mut self,
        opts: &QuantizeOptions,
        choice: &QuantChoice,
        log: &mut dyn FnMut(&str),
    ) -> Result<Vec<QatEpoch>> {
        let epochs = self.opts.qat_epochs;
        let fixed = QuantizeOptions {
            max_scored: QAT_SCORED,
            ..opts.clone()
        };
        let mut adam = Adam::new(&self.l);
        let mut progress = Vec::new();
        for epoch in 0..epochs {
            shuffle(&mut self.order, &mut self.rng);
            let lr = QAT_LR * cosine(epoch, epochs);
            let mut correct = 0;
            for chunk in self.order.clone().chunks(BATCH) {
                let (g, ok) = self.qat_batch(chunk, &fixed, choice)?;
                correct += ok;
                self.step(&mut adam, g, chunk.len(), lr, true);
            }
            if epoch % REPORT_EVERY == REPORT_EVERY - 1 || epoch + 1 == epochs {
                let m = to_model(&self.l, &self.p);
                let e = QatEpoch {
                    epoch: epoch + 1,
                    quantized_train_running: correct as f64 / self.train.len() as f64,
                    float_train_accuracy: float_accuracy(&m, self.train),
                    float_test_accuracy: float_accuracy(&m, self.test),
                };
                log(&format!(
                    "qat epoch {:3}: quantized train (running) {:.2}%, float train {:.2}%, float test {:.2}%",
                    e.epoch,
                    100.0 * e.quantized_train_running,
                    100.0 * e.float_train_accuracy,
                    100.0 * e.float_test_accuracy,
                ));
                progress.push(e);
            }
        }
        Ok(progress)
    }

    /// The summed gradient of one batch (float and quantized losses, record by record, under
    /// the batch's quantization of the current weights) and its quantized correct count.
    fn qat_batch(
        &mut self,
        chunk: &[usize],
        fixed: &QuantizeOptions,
        choice: &QuantChoice,
    ) -> Result<(Vec<f64>, usize)> {
        let o = self.opts;
        let l = &self.l;
        let (qc, rep) = quantize_fixed(&to_model(l, &self.p), fixed, choice, &self.train.features)?;
        let steps = Steps::of(&rep);
        let weights = QatWeights {
            quant: o.quant_weight,
            router: o.router_qat,
            router_alt: o.router_alt,
        };
        let mut g = zero_grad(l);
        let g_p = balance_grad(l, &self.p, chunk, &self.xs, o.balance);
        let mut correct = 0;
        for &i in chunk {
            let (features, label) = (&self.train.features[i], self.train.labels[i]);
            let raw = augment(features, o.augment, &mut self.rng);
            float_record(l, &self.p, &mut g, &block_input(&raw), label, &g_p);
            let raw = augment(features, o.qat_augment, &mut self.rng);
            correct +=
                qat_record(l, &self.p, &mut g, &qc, &steps, (&raw, label), &weights)? as usize;
        }
        Ok((g, correct))
    }
}
