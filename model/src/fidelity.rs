//! Fidelity: how far a quantized (or decrypted) MoE block is from the float model it came from.
//!
//! Agreement with veilmoe's own integer reference says the encryption is exact; it says nothing
//! about whether the quantized model still means what the checkpoint meant. These measures
//! compare against the float model: cosine similarity and relative L2 error of the dequantized
//! block output against the float block output, whether the same experts were chosen, top-1
//! agreement of a classifier's predictions, and the same error per stage (router logits,
//! pre-activations, activations) so that a report can say where precision is lost.

use crate::checkpoint::FloatMoeModel;
use crate::classifier::QuantizedClassifier;
use crate::error::Result;
use crate::math::argmax;
use crate::quant::Activation;
use crate::reference::Rounding;
use crate::FfnKind;
use serde::Serialize;

/// Running cosine similarity and relative L2 error of approximate vectors against exact ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct VectorErrors {
    vectors: usize,
    cosine_sum: f64,
    cosine_min: f64,
    err_sq: f64,
    exact_sq: f64,
}

/// The summary of [`VectorErrors`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VectorFidelity {
    /// Vectors compared.
    pub vectors: usize,
    /// Mean cosine similarity (1: same direction).
    pub cosine_mean: f64,
    /// Worst cosine similarity of one vector.
    pub cosine_min: f64,
    /// `||approx - exact|| / ||exact||` over all vectors together (0: equal).
    pub relative_l2: f64,
}

impl VectorErrors {
    /// Adds one pair. Two zero vectors agree (cosine 1); a zero against a non-zero has cosine 0.
    pub fn add(&mut self, approx: &[f64], exact: &[f64]) {
        let dot: f64 = approx.iter().zip(exact).map(|(a, e)| a * e).sum();
        let na: f64 = approx.iter().map(|a| a * a).sum();
        let ne: f64 = exact.iter().map(|e| e * e).sum();
        let cosine = if na == 0.0 && ne == 0.0 {
            1.0
        } else if na == 0.0 || ne == 0.0 {
            0.0
        } else {
            dot / (na.sqrt() * ne.sqrt())
        };
        self.cosine_min = if self.vectors == 0 {
            cosine
        } else {
            self.cosine_min.min(cosine)
        };
        self.vectors += 1;
        self.cosine_sum += cosine;
        self.err_sq += approx
            .iter()
            .zip(exact)
            .map(|(a, e)| (a - e) * (a - e))
            .sum::<f64>();
        self.exact_sq += ne;
    }

    pub fn summary(&self) -> VectorFidelity {
        VectorFidelity {
            vectors: self.vectors,
            cosine_mean: self.cosine_sum / self.vectors.max(1) as f64,
            cosine_min: if self.vectors == 0 {
                0.0
            } else {
                self.cosine_min
            },
            relative_l2: if self.exact_sq > 0.0 {
                (self.err_sq / self.exact_sq).sqrt()
            } else if self.err_sq > 0.0 {
                f64::INFINITY
            } else {
                0.0
            },
        }
    }
}

impl std::fmt::Display for VectorFidelity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cosine {:.4} (min {:.4}), relative L2 error {:.4}",
            self.cosine_mean, self.cosine_min, self.relative_l2
        )
    }
}

/// One stage's error against the float model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageFidelity {
    pub stage: &'static str,
    pub fidelity: VectorFidelity,
}

/// A quantized classifier's fidelity to its float model over some records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fidelity {
    pub records: usize,
    /// The dequantized block output (`y * y_step`) against the float block output.
    pub block_output: VectorFidelity,
    /// Records whose selected experts (as a set) are the float router's.
    pub expert_agreement: f64,
    /// Records whose predicted class is the float model's (classifiers with a head only).
    pub top1_agreement: Option<f64>,
    /// Router logits (centered: softmax ignores a common shift), pre-activations and
    /// activations of the selected experts, each dequantized against the float values.
    pub stages: Vec<StageFidelity>,
}

impl std::fmt::Display for Fidelity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records: block output {}; experts agree {:.1} %",
            self.records,
            self.block_output,
            100.0 * self.expert_agreement
        )?;
        if let Some(t) = self.top1_agreement {
            write!(f, "; top-1 agrees {:.1} %", 100.0 * t)?;
        }
        Ok(())
    }
}

fn centered(v: &[f64]) -> Vec<f64> {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.iter().map(|x| x - mean).collect()
}

fn to_f64(v: impl IntoIterator<Item = f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

/// Fidelity of the quantized reference (under `rounding`) to the float model on `records`.
pub fn reference_fidelity(
    float: &FloatMoeModel,
    q: &QuantizedClassifier,
    records: &[Vec<f32>],
    rounding: &mut Rounding,
) -> Result<Fidelity> {
    let moe = &q.moe;
    let qp = &moe.quant;
    let mut block = VectorErrors::default();
    let (mut logits, mut pre, mut act) = Default::default();
    let (mut experts_agree, mut top1_agree) = (0usize, 0usize);
    // the shared expert: its gates over all records (one vector), its outputs per record
    let (mut shared_gates, mut float_gates) = (Vec::new(), Vec::new());
    let mut shared_out = VectorErrors::default();
    let y_step = q.y_step();
    for raw in records {
        let xq = q.quantize_input(raw)?;
        let x = float.model_input(raw);
        let r = moe.reference(&xq, rounding);
        let y: Vec<f64> = r.y.iter().map(|&v| v as f64 * y_step).collect();
        block.add(&y, &to_f64(float.block_output(raw)));
        let (float_sel, _) = float.route(&x);
        let mut a = r.selected.clone();
        let mut b = float_sel;
        a.sort_unstable();
        b.sort_unstable();
        experts_agree += (a == b) as usize;
        let ql: Vec<f64> = r
            .logits
            .iter()
            .map(|&l| l as f64 * qp.logit_scale)
            .collect();
        VectorErrors::add(
            &mut logits,
            &centered(&ql),
            &centered(&to_f64(float.router_logits(&x))),
        );
        for &e in &r.selected {
            let trace = float.expert_trace(e, &x);
            let u = moe.pre_activations(e, &xq, &mut Rounding::Exact);
            let u_real: Vec<f64> = u.iter().map(|&v| v as f64 * qp.act_in_scale).collect();
            VectorErrors::add(&mut pre, &u_real, &to_f64(trace.u.iter().copied()));
            let f = match moe.config.ffn {
                FfnKind::Plain(f) => f,
                FfnKind::GatedSilu => Activation::Silu,
            };
            let (qa, fa): (Vec<f64>, Vec<f64>) = moe
                .pre_activation_accumulators(e, &xq)
                .into_iter()
                .zip(trace.u.iter())
                .map(|(a, &fu)| {
                    (
                        moe.activation_sum(a, &mut Rounding::Exact) as f64 * qp.act_out_scale
                            / qp.activation_reads as f64,
                        f.apply(fu as f64),
                    )
                })
                .unzip();
            VectorErrors::add(&mut act, &qa, &fa);
        }
        if let (Some((g, o)), Some(fs)) = (&r.shared, &float.shared) {
            let g_max = qp.gate_max() as f64;
            shared_gates.push(*g as f64 / g_max);
            float_gates.push(float.shared_gate(&x).unwrap_or(0.0) as f64);
            // o in accumulator steps: y = sum g o with g in [0, G] standing for [0, 1]
            let o_real: Vec<f64> = o.iter().map(|&v| v as f64 * y_step * g_max).collect();
            shared_out.add(&o_real, &to_f64(float.ffn_trace(&fs.ffn, &x).o));
        }
        if float.head.is_some() && q.head.is_some() {
            let out = q.outputs_from(&xq, &r.y);
            top1_agree += (argmax(&out) == float.predict(raw)) as usize;
        }
    }
    let n = records.len().max(1) as f64;
    let activation = match moe.config.ffn {
        FfnKind::Plain(_) => "activation",
        FfnKind::GatedSilu => "silu factor",
    };
    Ok(Fidelity {
        records: records.len(),
        block_output: block.summary(),
        expert_agreement: experts_agree as f64 / n,
        top1_agreement: (float.head.is_some() && q.head.is_some()).then(|| top1_agree as f64 / n),
        stages: vec![
            StageFidelity {
                stage: "router logits",
                fidelity: logits.summary(),
            },
            StageFidelity {
                stage: "pre-activation",
                fidelity: pre.summary(),
            },
            StageFidelity {
                stage: activation,
                fidelity: act.summary(),
            },
        ]
        .into_iter()
        .chain(shared_stages(&shared_gates, &float_gates, shared_out))
        .collect(),
    })
}

/// The shared expert's stages (none without one): its gate over all records as one vector
/// (a scalar per record), its output per record.
fn shared_stages(q: &[f64], f: &[f64], out: VectorErrors) -> Vec<StageFidelity> {
    if q.is_empty() {
        return Vec::new();
    }
    let mut gates = VectorErrors::default();
    gates.add(q, f);
    vec![
        StageFidelity {
            stage: "shared gate",
            fidelity: gates.summary(),
        },
        StageFidelity {
            stage: "shared expert output",
            fidelity: out.summary(),
        },
    ]
}

/// Fidelity of decrypted block outputs (`y` as the client decrypts it, in accumulator steps)
/// to the float block outputs of the same raw records.
pub fn decrypted_fidelity(
    float: &FloatMoeModel,
    q: &QuantizedClassifier,
    records: &[(&[f32], &[i64])],
) -> VectorFidelity {
    let y_step = q.y_step();
    let mut e = VectorErrors::default();
    for (raw, y) in records {
        let y: Vec<f64> = y.iter().map(|&v| v as f64 * y_step).collect();
        e.add(&y, &to_f64(float.block_output(raw)));
    }
    e.summary()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_errors_measure_direction_and_size() {
        let mut e = VectorErrors::default();
        e.add(&[1.0, 0.0], &[1.0, 0.0]);
        e.add(&[0.0, 2.0], &[1.0, 0.0]);
        let s = e.summary();
        assert_eq!(s.vectors, 2);
        assert!((s.cosine_mean - 0.5).abs() < 1e-12);
        assert_eq!(s.cosine_min, 0.0);
        // errors 0 and sqrt(5) against norms 1 and 1
        assert!((s.relative_l2 - (5.0f64 / 2.0).sqrt()).abs() < 1e-12);
        let mut z = VectorErrors::default();
        z.add(&[0.0], &[0.0]);
        assert_eq!(z.summary().cosine_mean, 1.0);
        assert_eq!(z.summary().relative_l2, 0.0);
    }

    #[test]
    fn the_demo_model_stays_close_to_its_float_model() {
        let float = crate::embedded_demo_model().unwrap();
        let (train, test) = crate::digits_split(&crate::embedded_digits().unwrap());
        let q = crate::quantize(&float, 4, &train.features).unwrap();
        let f =
            reference_fidelity(&float, &q, &test.features[..120], &mut Rounding::Exact).unwrap();
        assert_eq!(f.records, 120);
        eprintln!("{f}");
        for s in &f.stages {
            eprintln!("  {}: {}", s.stage, s.fidelity);
        }
        // Measured (2026-12-05): block output cosine 0.795, relative L2 0.54, experts agree
        // 83 %, top-1 100 %. The demo was trained for its 4-bit reads as a classifier: its
        // predictions keep their meaning, its block output only roughly (cosine 0.90 where the
        // experts agree, 0.28 where one router read picks another expert). The bounds catch
        // a regression of the quantizer or of the measure.
        assert!(f.block_output.cosine_mean > 0.7, "{f}");
        assert!(f.block_output.relative_l2 < 0.7, "{f}");
        assert!(f.expert_agreement > 0.75, "{f}");
        assert!(f.top1_agreement.unwrap() > 0.95, "{f}");
        assert_eq!(f.stages.len(), 3);
        for s in &f.stages {
            assert!(s.fidelity.cosine_mean > 0.5, "{}: {}", s.stage, s.fidelity);
        }
    }

    /// A gated Mixtral-like block, Gaussian weights of std 1/sqrt(fan-in).
    fn random_mixtral(d: usize, h: usize, e: usize, k: usize, seed: u64) -> FloatMoeModel {
        let config = crate::MoeConfig {
            d: crate::ModelDim(d),
            h: crate::HiddenDim(h),
            experts: crate::ExpertCount(e),
            top_k: crate::TopK(k),
            ffn: FfnKind::GatedSilu,
            gating: crate::Gating::SoftmaxSelected,
        };
        FloatMoeModel::random(config, 1.0, seed)
    }

    /// W2 quantized for a wide output (no read) against W2 held to a read's noise budget, as
    /// before the outputs were returned wide, on four untrained checkpoints. Recorded
    /// (2026-12-05), relative L2 error of the block output, read budget -> wide: 0.939 ->
    /// 0.931, 0.979 -> 0.986, 0.876 -> 0.844, 0.777 -> 0.679 (mean 0.893 -> 0.860). The
    /// quantization is deterministic; the greedy search makes single models move either way,
    /// so the test holds the mean. Most of the loss is upstream (router logits and the
    /// worst-case first-stage shifts), which this does not touch.
    #[test]
    fn wide_outputs_let_w2_keep_more_precision() {
        let wide = crate::QuantizeOptions::for_message_bits(4);
        // the former limit: a read's budget
        let read = crate::QuantizeOptions {
            wide_output_noise: 1.0,
            ..wide.clone()
        };
        assert_eq!(read.w2_norm2_limit(false, false), 25);
        assert_eq!(read.w2_norm2_limit(true, false), 12);
        assert_eq!(wide.w2_norm2_limit(false, false), 1600);
        assert_eq!(wide.w2_norm2_limit(true, false), 800);
        // Mixtral top-2: the slot outputs' encoding is one bit wider
        assert_eq!(wide.w2_norm2_limit(true, true), 200);
        let (mut before, mut after) = (0.0, 0.0);
        for (d, h, e, k) in [(8, 8, 4, 2), (8, 16, 4, 1), (16, 16, 8, 2), (4, 8, 4, 1)] {
            let float = random_mixtral(d, h, e, k, 5);
            let mut rng = crate::SplitMix(9);
            let records: Vec<Vec<f32>> = (0..200)
                .map(|_| (0..d).map(|_| rng.gaussian() as f32).collect())
                .collect();
            // the former rule ignored the slot encoding's extra bit (a read had its own)
            let read = crate::QuantizeOptions {
                wide_output_noise: if float.config.subtracts_slot_outputs() {
                    2.0
                } else {
                    1.0
                },
                ..read.clone()
            };
            let fid = |o: &crate::QuantizeOptions| {
                let (q, _) = crate::quantize_with(&float, o, &records).unwrap();
                reference_fidelity(&float, &q, &records, &mut Rounding::Exact).unwrap()
            };
            let (b, a) = (fid(&read), fid(&wide));
            eprintln!("d {d} h {h} E {e} k {k}\n  W2 at a read's budget: {b}\n  W2 wide: {a}");
            before += b.block_output.relative_l2 / 4.0;
            after += a.block_output.relative_l2 / 4.0;
        }
        assert!(
            after < before - 0.02,
            "mean relative L2 {before:.3} -> {after:.3}"
        );
    }

    /// Calibrated ranges (the default) against worst-case ones on four untrained blocks:
    /// finer first-stage reads and narrower outputs bring the block output closer to the float
    /// model; no calibration record overflows (every scored row fits by construction); records
    /// far outside the calibration data are named, and never under worst-case ranges.
    #[test]
    fn calibrated_ranges_read_finer_and_name_the_records_that_would_wrap() {
        let calibrated = crate::QuantizeOptions::for_message_bits(4);
        let worst = crate::QuantizeOptions {
            calibrated_headroom: None,
            ..calibrated.clone()
        };
        let (mut before, mut after) = (0.0, 0.0);
        for (d, h, e, k) in [(8, 8, 4, 2), (8, 16, 4, 1), (16, 16, 8, 2), (16, 8, 4, 1)] {
            let float = random_mixtral(d, h, e, k, 11);
            let mut rng = crate::SplitMix(3);
            let records: Vec<Vec<f32>> = (0..200)
                .map(|_| (0..d).map(|_| rng.gaussian() as f32).collect())
                .collect();
            let (qc, _) = crate::quantize_with(&float, &calibrated, &records).unwrap();
            let (qw, _) = crate::quantize_with(&float, &worst, &records).unwrap();
            // the shift grows with the input's bits beyond a read's
            let extra = qc.moe.quant.extra_input_bits();
            assert_eq!(extra, crate::quantize::DEFAULT_INPUT_BITS - 4);
            assert_eq!(
                qc.moe.calibrated_shift,
                Some(calibrated.first_stage_shift + extra)
            );
            // never wider than its own worst case
            let own_worst = crate::QuantizedMoe {
                calibrated_output_width: None,
                ..qc.moe.clone()
            };
            assert!(qc.moe.expert_output_width() <= own_worst.expert_output_width());
            assert_eq!(
                qc.overflowing_records(&records).unwrap(),
                Vec::<usize>::new()
            );
            // far outside: signs aligned with a router row, at the input range's ends
            let far: Vec<Vec<f32>> = (0..e)
                .map(|r| {
                    (0..d)
                        .map(|c| 4.0 * float.router[[r, c]].signum())
                        .collect()
                })
                .collect();
            assert!(qw.overflowing_records(&far).unwrap().is_empty());
            let named = qc.overflowing_records(&far).unwrap();
            assert!(
                !named.is_empty(),
                "a row driven to its worst case overflows"
            );
            let fid = |q: &crate::QuantizedClassifier| {
                reference_fidelity(&float, q, &records, &mut Rounding::Exact).unwrap()
            };
            let (w, c) = (fid(&qw), fid(&qc));
            eprintln!(
                "d {d} h {h} E {e} k {k}: worst case {w}\n  calibrated {c}; {} of {e} far records overflow",
                named.len()
            );
            before += w.block_output.relative_l2 / 4.0;
            after += c.block_output.relative_l2 / 4.0;
        }
        assert!(
            after < before - 0.05,
            "mean relative L2 {before:.3} -> {after:.3}"
        );
    }
}
