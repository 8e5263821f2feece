//! Plaintext integer reference of the encrypted MoE layer, step by step, and its simulation
//! mode.
//!
//! The reference mirrors every quantization step of the encrypted path (same tables, from
//! [`crate::quant`]). Requantizing PBS reads of wide accumulators are the one approximate step:
//! with [`Rounding::Exact`] the reference rounds to nearest; with [`Rounding::Simulated`] it adds
//! Gaussian noise of a preset's standard deviation (in box units, see [`Rounding::simulated`];
//! veilmoe-protocols derives it from a preset) before rounding, which
//! reproduces the encrypted path's floor-or-ceil errors at their rate, for fast accuracy studies.
//! Each stage is a public function so that tests can feed it decrypted intermediates and check
//! every exact stage exactly.

use crate::arch::{FfnKind, Gating};
use crate::quant::{self, round_shift};
use crate::quantized::{ExpertWeights, QuantizedMoe, RouterSpec};
use crate::random::SplitMix;
use ndarray::{Array1, ArrayView2};

/// How requantizing reads round.
#[derive(Debug, Clone)]
pub enum Rounding {
    /// Round to nearest (what the encrypted path does away from box edges).
    Exact,
    /// Round after adding Gaussian noise of `sigma` boxes (the encrypted path's behaviour);
    /// comparisons of accumulators decide near ties with noise of `comparison_sigma` boxes.
    Simulated {
        sigma: f64,
        comparison_sigma: f64,
        rng: SplitMix,
    },
}

impl Rounding {
    /// The simulation of a read whose phase noise has standard deviation `torus_std` (a
    /// fraction of the torus; the engine's noise model gives it for a preset), for a model
    /// quantized for `read_bits`: the noise in units of one box of a `read_bits`-bit read
    /// (a box is `2^-(read_bits + 1)` of the torus under the padding bit).
    /// Comparisons are simulated at the reads' noise; see [`Rounding::with_comparison_std`].
    pub fn simulated(torus_std: f64, read_bits: u32, seed: u64) -> Rounding {
        let sigma = torus_std * 2f64.powi(read_bits as i32 + 1);
        Rounding::Simulated {
            sigma,
            comparison_sigma: sigma,
            rng: SplitMix(seed),
        }
    }

    /// The same simulation with comparisons ([`Rounding::greater`]) deciding near ties with
    /// phase noise of standard deviation `torus_std` at the scale of the difference (the
    /// engine refines a comparison's sign read, so it is finer than a read's; the engine's
    /// noise model gives it), for a model quantized for `read_bits`. Exact rounding stays exact.
    pub fn with_comparison_std(self, torus_std: f64, read_bits: u32) -> Rounding {
        match self {
            Rounding::Exact => Rounding::Exact,
            Rounding::Simulated { sigma, rng, .. } => Rounding::Simulated {
                sigma,
                comparison_sigma: torus_std * 2f64.powi(read_bits as i32 + 1),
                rng,
            },
        }
    }

    /// `round(a / 2^shift)` as a PBS reads it.
    pub fn read(&mut self, a: i64, shift: u32) -> i64 {
        match self {
            Rounding::Exact => round_shift(a, shift),
            Rounding::Simulated { sigma, rng, .. } => {
                let v = a as f64 / 2f64.powi(shift as i32) + *sigma * rng.gaussian();
                (v + 0.5).floor() as i64
            }
        }
    }

    /// `[d > 0]` as a comparison by the sign of `d` at the blind rotation decides it, for a
    /// difference of accumulators read with `shift` (the simulated noise is in that read's
    /// boxes; the threshold sits at `d = 1/2`).
    pub fn greater(&mut self, d: i64, shift: u32) -> bool {
        match self {
            Rounding::Exact => d > 0,
            Rounding::Simulated {
                comparison_sigma,
                rng,
                ..
            } => {
                (d as f64 - 0.5) / 2f64.powi(shift as i32) + *comparison_sigma * rng.gaussian()
                    > 0.0
            }
        }
    }
}

/// Everything the reference computes for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefOutput {
    /// Router logits, in [0, logit_max].
    pub logits: Vec<i64>,
    /// Selected experts, one per slot (highest logit first, ties to the lowest index).
    pub selected: Vec<usize>,
    /// The selected logits.
    pub slot_logits: Vec<i64>,
    /// Switch gating: each slot's partition sum.
    pub partition_sums: Vec<i64>,
    /// Gates in [0, G], one per slot.
    pub gates: Vec<i64>,
    /// Hidden activations of each slot's expert (h values).
    pub hidden: Vec<Vec<i64>>,
    /// Each slot's expert output accumulator `W2 a + b2` (d values, wide: never read through a
    /// PBS; the client decrypts it at its full width).
    pub expert_outputs: Vec<Vec<i64>>,
    /// The shared expert's gate in [0, G] and its output accumulator `W2 a + b2` (Qwen2-MoE).
    pub shared: Option<(i64, Vec<i64>)>,
    /// The shared expert's hidden activations (what the encrypted path's digits of its output
    /// follow from, [`QuantizedMoe::encrypted_outputs`]).
    pub shared_hidden: Option<Vec<i64>>,
    /// Layer output `sum_slots gate * expert_output` (plus `shared gate * shared output`), in
    /// accumulator steps (see [`QuantizedMoe::expert_output_shift`] for the step of an m-bit
    /// read).
    pub y: Vec<i64>,
}

/// `W2 a + b2` of an FFN with `d` outputs.
fn ffn_output(w: &ExpertWeights, d: usize, hidden: &[i64]) -> Vec<i64> {
    matvec(&w.w2, w.b2.as_deref(), d, hidden)
}

/// `W x + b` for `rows` rows of `x.len()` columns (shapes validated by the caller).
pub(crate) fn matvec(w: &[i64], b: Option<&[i64]>, rows: usize, x: &[i64]) -> Vec<i64> {
    let cols = x.len();
    let w = ArrayView2::from_shape((rows, cols), w).expect("validated shape");
    let mut y: Array1<i64> = w.dot(&Array1::from(x.to_vec()));
    if let Some(b) = b {
        y += &Array1::from(b.to_vec());
    }
    y.to_vec()
}

impl RouterSpec<'_> {
    /// Router accumulators `Wr x + br` (exact).
    pub fn accumulators(&self, x: &[i64]) -> Vec<i64> {
        matvec(self.weights, self.bias, self.experts, x)
    }

    /// Logits from router accumulators: the top `message_bits` bits of the input width, read
    /// through the logit table.
    pub fn logits(&self, acc: &[i64], rounding: &mut Rounding) -> Vec<i64> {
        let s = self.input_width - self.quant.message_bits;
        acc.iter()
            .map(|&a| self.quant.logit(rounding.read(a, s)))
            .collect()
    }
}

impl QuantizedMoe {
    /// Router accumulators `Wr x + br` (exact).
    pub fn router_accumulators(&self, x: &[i64]) -> Vec<i64> {
        self.router_spec().accumulators(x)
    }

    /// Logits from router accumulators.
    pub fn logits(&self, acc: &[i64], rounding: &mut Rounding) -> Vec<i64> {
        self.router_spec().logits(acc, rounding)
    }

    /// Switch gating: the partition sum of a slot whose logit is `v` (exact).
    pub fn partition_sum(&self, logits: &[i64], v: i64) -> i64 {
        let q = &self.quant;
        logits
            .iter()
            .map(|&l| quant::switch_term(l - v, q.logit_scale, q.switch_numerator, q.switch_cap()))
            .sum()
    }

    /// Shift of the Switch partition-sum read.
    pub fn partition_shift(&self) -> u32 {
        let hi = self.quant.switch_cap() as i128 * self.config.experts.0 as i128;
        quant::read_width(0, hi, self.quant.message_bits) - self.quant.message_bits
    }

    /// Gates of the selected slots. `partition_sums` are only used by Switch gating.
    pub fn gates(
        &self,
        slot_logits: &[i64],
        partition_sums: &[i64],
        rounding: &mut Rounding,
    ) -> Vec<i64> {
        let q = &self.quant;
        let g = q.gate_max();
        match self.config.gating {
            Gating::SoftmaxSelected => match slot_logits {
                [_] => vec![g],
                [v1, v2] => {
                    let g1 = quant::mixtral_gate(v1 - v2, q.logit_scale, g);
                    vec![g1, g - g1]
                }
                _ => unreachable!("top-k is validated to 1 or 2"),
            },
            Gating::SoftmaxThenTopK => {
                let s = self.partition_shift();
                partition_sums
                    .iter()
                    .map(|&z| quant::switch_gate(rounding.read(z, s), s, q.switch_numerator, g))
                    .collect()
            }
        }
    }

    /// Requantized pre-activations `read(W1 x + b1)` of expert `e`: the values its activation
    /// (or, gated, its silu factor) reads.
    pub fn pre_activations(&self, e: usize, x: &[i64], rounding: &mut Rounding) -> Vec<i64> {
        let s = self.input_shift();
        self.pre_activation_accumulators(e, x)
            .into_iter()
            .map(|a| rounding.read(a, s))
            .collect()
    }

    /// Expert `e`'s W1 accumulators `W1 x + b1` (exact, before any read).
    pub fn pre_activation_accumulators(&self, e: usize, x: &[i64]) -> Vec<i64> {
        let w = &self.experts[e];
        matvec(&w.w1, w.b1.as_deref(), self.config.h.0, x)
    }

    /// Hidden activations of expert `e` (per unit, the sum of its requantizing reads at their
    /// offsets, one read by default, each times the exact linear factor of a gated FFN).
    pub fn hidden(&self, e: usize, x: &[i64], rounding: &mut Rounding) -> Vec<i64> {
        self.ffn_hidden(&self.experts[e], self.config.h.0, x, rounding)
    }

    /// Hidden activations of any FFN of the layer (`h` units): a routed expert or the shared one.
    pub fn ffn_hidden(
        &self,
        w: &ExpertWeights,
        h: usize,
        x: &[i64],
        rounding: &mut Rounding,
    ) -> Vec<i64> {
        let (s, q) = (self.input_shift(), &self.quant);
        let u = matvec(&w.w1, w.b1.as_deref(), h, x);
        match self.config.ffn {
            // the sum of the activation's reads at their offsets (one read: offset 0)
            FfnKind::Plain(_) => u
                .into_iter()
                .map(|a| self.activation_sum(a, rounding))
                .collect(),
            FfnKind::GatedSilu => {
                // the factors' reads alternate per unit (the simulated rounding's order)
                let v = matvec(w.w3.as_deref().unwrap_or(&[]), w.b3.as_deref(), h, x);
                u.iter()
                    .zip(&v)
                    .map(|(&a, &b)| {
                        let silu = self.activation_sum(a, rounding);
                        if self.linear_in_product {
                            // read inside the two quarter squares: each rounds W3x on its own
                            // (one silu read: validated)
                            let (l1, l2) = (rounding.read(b, s), rounding.read(b, s));
                            quant::quarter_square(silu + l1) - quant::quarter_square(silu - l2)
                        } else {
                            // each silu read's product with the one linear read, summed
                            silu * q.gated_linear(rounding.read(b, s))
                        }
                    })
                    .collect()
            }
        }
    }

    /// Output accumulators `W2 a + b2` of expert `e` from its hidden activations. Exact: the
    /// encrypted path returns them wide, with no requantizing read (the client decrypts them at
    /// full width, so no PBS is spent and no rounding is lost on the way out).
    pub fn expert_output(&self, e: usize, hidden: &[i64]) -> Vec<i64> {
        ffn_output(&self.experts[e], self.config.d.0, hidden)
    }

    /// The shared expert's gate and output accumulators (`None` without a shared expert).
    pub fn shared_reference(&self, x: &[i64], rounding: &mut Rounding) -> Option<(i64, Vec<i64>)> {
        self.shared_parts(x, rounding).map(|(g, _, o)| (g, o))
    }

    /// The shared expert's gate, hidden activations and output accumulators.
    fn shared_parts(
        &self,
        x: &[i64],
        rounding: &mut Rounding,
    ) -> Option<(i64, Vec<i64>, Vec<i64>)> {
        let sh = self.shared.as_ref()?;
        let acc = matvec(&sh.gate, Some(std::slice::from_ref(&sh.gate_bias)), 1, x)[0];
        let gate = sh.gate_value(
            rounding.read(acc, self.input_shift()),
            self.quant.gate_max(),
        );
        let hidden = self.ffn_hidden(&sh.weights, sh.h, x, rounding);
        let out = ffn_output(&sh.weights, self.config.d.0, &hidden);
        Some((gate, hidden, out))
    }

    /// The layer output (exact): the slot output itself under a constant gate, otherwise
    /// `sum_slots gate * output`.
    pub fn combine(&self, gates: &[i64], outputs: &[Vec<i64>]) -> Vec<i64> {
        if self.output_is_slot() {
            return outputs[0].clone();
        }
        let mut y = vec![0i64; self.config.d.0];
        for (g, o) in gates.iter().zip(outputs) {
            for (yi, oi) in y.iter_mut().zip(o) {
                *yi += g * oi;
            }
        }
        y
    }

    /// Routing from logits: selected experts, their logits, Switch partition sums.
    pub fn route(&self, logits: &[i64]) -> (Vec<usize>, Vec<i64>, Vec<i64>) {
        let selected = crate::math::top_k(logits, self.config.top_k.0);
        let slot_logits: Vec<i64> = selected.iter().map(|&i| logits[i]).collect();
        let sums = self.partition_sums(logits, &slot_logits);
        (selected, slot_logits, sums)
    }

    /// The comparison bits of pairwise routing ([`crate::pairwise`]), `[acc_j > acc_i]` for
    /// each pair in [`crate::pairwise::pairs`] order.
    pub fn pairwise_bits(&self, acc: &[i64], rounding: &mut Rounding) -> Vec<i64> {
        let s = self.input_shift();
        crate::pairwise::pairs(acc.len())
            .into_iter()
            .map(|(i, j)| rounding.greater(acc[j] - acc[i], s) as i64)
            .collect()
    }

    /// Pairwise routing from the comparison bits (decrypted, or [`QuantizedMoe::pairwise_bits`])
    /// and the logits (for the gates): selected experts, slot logits and Switch partition sums.
    /// A rank with no single expert (a near-tie cycle) selects the OR of its experts' indices
    /// with the largest of their logits (expert 0 and 0 when empty), as the encrypted path does.
    pub fn route_pairwise(&self, bits: &[i64], logits: &[i64]) -> (Vec<usize>, Vec<i64>, Vec<i64>) {
        let wins = crate::pairwise::wins(logits.len(), bits);
        let sets = crate::pairwise::rank_sets(&wins, self.config.top_k.0);
        let selected: Vec<usize> = sets
            .iter()
            .map(|s| crate::pairwise::selected_index(s))
            .collect();
        let slot_logits: Vec<i64> = sets
            .iter()
            .map(|s| s.iter().map(|&i| logits[i]).max().unwrap_or(0))
            .collect();
        let sums = self.partition_sums(logits, &slot_logits);
        (selected, slot_logits, sums)
    }

    /// Switch gating's partition sum of each slot (none for Mixtral gating).
    fn partition_sums(&self, logits: &[i64], slot_logits: &[i64]) -> Vec<i64> {
        match self.config.gating {
            Gating::SoftmaxThenTopK => slot_logits
                .iter()
                .map(|&v| self.partition_sum(logits, v))
                .collect(),
            Gating::SoftmaxSelected => Vec::new(),
        }
    }

    /// The whole layer on one token.
    pub fn reference(&self, x: &[i64], rounding: &mut Rounding) -> RefOutput {
        let acc = self.router_accumulators(x);
        let logits = self.logits(&acc, rounding);
        let (selected, slot_logits, partition_sums) = if self.pairwise_routing {
            let bits = self.pairwise_bits(&acc, rounding);
            self.route_pairwise(&bits, &logits)
        } else {
            self.route(&logits)
        };
        let gates = self.gates(&slot_logits, &partition_sums, rounding);
        let hidden: Vec<Vec<i64>> = selected
            .iter()
            .map(|&e| self.hidden(e, x, rounding))
            .collect();
        let expert_outputs: Vec<Vec<i64>> = selected
            .iter()
            .zip(&hidden)
            .map(|(&e, hd)| self.expert_output(e, hd))
            .collect();
        let mut y = self.combine(&gates, &expert_outputs);
        let mut shared_hidden = None;
        let shared = self.shared_parts(x, rounding).map(|(g, hd, o)| {
            for (yi, oi) in y.iter_mut().zip(&o) {
                *yi += g * oi;
            }
            shared_hidden = Some(hd);
            (g, o)
        });
        RefOutput {
            shared_hidden,
            logits,
            selected,
            slot_logits,
            partition_sums,
            gates,
            hidden,
            expert_outputs,
            shared,
            y,
        }
    }
}
