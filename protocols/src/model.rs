//! A quantized MoE layer: public architecture, integer weights and the public quantization
//! parameters both the encrypted path and the plaintext reference follow.

use crate::error::{config, ProtocolError, Result};
use crate::quant::{self, Activation};
use serde::{Deserialize, Serialize};

/// Model (token) dimension d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDim(pub usize);
/// Hidden dimension h of one expert FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiddenDim(pub usize);
/// Number of experts E.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertCount(pub usize);
/// Experts per token k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopK(pub usize);

/// The FFN of one expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// W2 act(W1 x + b1) + b2.
    Plain(Activation),
    /// W2 (silu(W1 x + b1) * (W3 x + b3)) + b2 (Mixtral, Qwen-MoE, OLMoE).
    GatedSilu,
}

impl FfnKind {
    pub fn name(self) -> String {
        match self {
            FfnKind::Plain(a) => a.name().to_string(),
            FfnKind::GatedSilu => "gated-silu".to_string(),
        }
    }
}

/// How gate values are computed from the router logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gating {
    /// Top-k first, softmax over the k selected logits (Mixtral).
    SoftmaxSelected,
    /// Softmax over all E logits, then top-k, gates not renormalized (Switch, Qwen-MoE).
    SoftmaxThenTopK,
}

/// Public architecture of an MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub d: ModelDim,
    pub h: HiddenDim,
    pub experts: ExpertCount,
    pub top_k: TopK,
    pub ffn: FfnKind,
    pub gating: Gating,
}

/// Public quantization parameters (see [`crate::quant`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Bits a PBS reads exactly (at most the preset's message bits; fewer leaves wider boxes).
    pub message_bits: u32,
    /// Zero point added to the requantized router output before clipping to the logit range.
    pub logit_zero_point: i64,
    /// Real value of one logit step (softmax temperature).
    pub logit_scale: f64,
    /// Real value of one step of a requantized pre-activation.
    pub act_in_scale: f64,
    /// Real value of one step of an activation output.
    pub act_out_scale: f64,
    /// Gate bits: gates are integers in [0, 2^gate_bits - 1] standing for [0, 1]. Encrypted gates
    /// multiply the slot outputs bit by bit (external products), which scales their PBS noise by
    /// sqrt(sum 4^b): 3 bits keep the decrypted output exact on the 4-bit presets.
    pub gate_bits: u32,
    /// Switch gating: the selected expert's own softmax term (numerator).
    pub switch_numerator: i64,
}

impl QuantParams {
    pub fn for_message_bits(message_bits: u32) -> QuantParams {
        QuantParams {
            message_bits,
            logit_zero_point: 3,
            logit_scale: 0.5,
            act_in_scale: 0.5,
            act_out_scale: 0.5,
            gate_bits: 3,
            switch_numerator: 4,
        }
    }
    /// Input values are signed m-bit integers.
    pub fn input_min(&self) -> i64 {
        -(1i64 << (self.message_bits - 1))
    }
    pub fn input_max(&self) -> i64 {
        (1i64 << (self.message_bits - 1)) - 1
    }
    /// Router logits live in [0, logit_max] so that differences (and the masked value -1 of a
    /// second top-k round) stay within the signed m-bit domain.
    pub fn logit_max(&self) -> i64 {
        (1i64 << (self.message_bits - 1)) - 2
    }
    /// Largest gate value G (stands for 1.0).
    pub fn gate_max(&self) -> i64 {
        (1i64 << self.gate_bits) - 1
    }
    /// Range of a gated FFN's factors (silu output and W3 branch): signed m-1 bits, so that
    /// their sum and difference stay within the signed m-bit domain.
    pub fn factor_range(&self) -> (i64, i64) {
        (
            -(1i64 << (self.message_bits - 2)),
            (1i64 << (self.message_bits - 2)) - 1,
        )
    }
    /// Switch gating caps each softmax term at this value.
    pub fn switch_cap(&self) -> i64 {
        (1i64 << self.message_bits) - 1
    }
    /// Range of the hidden activations fed to W2.
    pub fn hidden_range(&self, ffn: FfnKind) -> (i64, i64) {
        match ffn {
            FfnKind::Plain(act) => {
                let vals: Vec<i64> = (self.input_min()..=self.input_max())
                    .map(|q| self.activation(act, q))
                    .collect();
                (
                    *vals.iter().min().unwrap_or(&0),
                    *vals.iter().max().unwrap_or(&0),
                )
            }
            FfnKind::GatedSilu => {
                let (lo, hi) = self.factor_range();
                let c = [lo * lo, lo * hi, hi * hi];
                (*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0))
            }
        }
    }
    /// Activation table of a plain FFN (output clipped to the signed m-bit domain).
    pub fn activation(&self, act: Activation, q: i64) -> i64 {
        quant::activation_table(
            act,
            q,
            self.act_in_scale,
            self.act_out_scale,
            self.input_min(),
            self.input_max(),
        )
    }
    /// The silu factor of a gated FFN.
    pub fn gated_silu(&self, q: i64) -> i64 {
        let (lo, hi) = self.factor_range();
        quant::activation_table(
            Activation::Silu,
            q,
            self.act_in_scale,
            self.act_out_scale,
            lo,
            hi,
        )
    }
    /// The linear factor of a gated FFN.
    pub fn gated_linear(&self, q: i64) -> i64 {
        let (lo, hi) = self.factor_range();
        q.clamp(lo, hi)
    }
    /// Logit from a requantized router output.
    pub fn logit(&self, q: i64) -> i64 {
        (q + self.logit_zero_point).clamp(0, self.logit_max())
    }
}

/// Integer weights of one expert (row-major `rows x cols`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertWeights {
    /// h x d
    pub w1: Vec<i64>,
    pub b1: Option<Vec<i64>>,
    /// h x d, gated FFNs only
    pub w3: Option<Vec<i64>>,
    pub b3: Option<Vec<i64>>,
    /// d x h
    pub w2: Vec<i64>,
    pub b2: Option<Vec<i64>>,
}

/// A quantized MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedMoe {
    pub config: MoeConfig,
    pub quant: QuantParams,
    /// E x d
    pub router: Vec<i64>,
    pub router_bias: Option<Vec<i64>>,
    pub experts: Vec<ExpertWeights>,
}

fn check_len(what: &str, v: &[i64], n: usize) -> Result<()> {
    if v.len() != n {
        return Err(ProtocolError::Weights(format!(
            "{what}: {} values, expected {n}",
            v.len()
        )));
    }
    Ok(())
}

fn check_opt(what: &str, v: &Option<Vec<i64>>, n: usize) -> Result<()> {
    match v {
        Some(v) => check_len(what, v, n),
        None => Ok(()),
    }
}

/// Worst-case range of `W x + b` for x in [lo, hi] (rows of length `cols`).
pub(crate) fn affine_range(
    w: &[i64],
    b: Option<&[i64]>,
    cols: usize,
    lo: i64,
    hi: i64,
) -> (i128, i128) {
    let (mut min, mut max) = (0i128, 0i128);
    for (r, row) in w.chunks(cols).enumerate() {
        let bias = b.map_or(0, |b| b[r]) as i128;
        let (mut rl, mut rh) = (bias, bias);
        for &c in row {
            let (a, z) = (c as i128 * lo as i128, c as i128 * hi as i128);
            rl += a.min(z);
            rh += a.max(z);
        }
        min = min.min(rl);
        max = max.max(rh);
    }
    (min, max)
}

impl QuantizedMoe {
    /// Checks shapes and limits (E <= 128, 1 <= k <= min(E, 2), dimensions non-zero).
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        let (d, h, e, k) = (c.d.0, c.h.0, c.experts.0, c.top_k.0);
        if d == 0 || h == 0 {
            return Err(config("d and h must be positive"));
        }
        if e == 0 || e > 128 {
            return Err(config(format!("1 to 128 experts are supported, got {e}")));
        }
        if k == 0 || k > 2 || k > e {
            return Err(config(format!(
                "top-k must be 1 or 2 and at most E = {e}, got {k}"
            )));
        }
        if self.quant.message_bits < 3 {
            return Err(config("the preset must read at least 3 bits per PBS"));
        }
        check_len("router", &self.router, e * d)?;
        check_opt("router bias", &self.router_bias, e)?;
        if self.experts.len() != e {
            return Err(ProtocolError::Weights(format!(
                "{} experts, expected {e}",
                self.experts.len()
            )));
        }
        for (i, x) in self.experts.iter().enumerate() {
            check_len(&format!("expert {i} w1"), &x.w1, h * d)?;
            check_opt(&format!("expert {i} b1"), &x.b1, h)?;
            check_len(&format!("expert {i} w2"), &x.w2, d * h)?;
            check_opt(&format!("expert {i} b2"), &x.b2, d)?;
            match (c.ffn, &x.w3) {
                (FfnKind::GatedSilu, Some(w3)) => {
                    check_len(&format!("expert {i} w3"), w3, h * d)?;
                    check_opt(&format!("expert {i} b3"), &x.b3, h)?;
                }
                (FfnKind::GatedSilu, None) => {
                    return Err(ProtocolError::Weights(format!(
                        "expert {i}: a gated FFN needs w3"
                    )))
                }
                (FfnKind::Plain(_), Some(_)) => {
                    return Err(ProtocolError::Weights(format!(
                        "expert {i}: w3 given for a plain FFN"
                    )))
                }
                (FfnKind::Plain(_), None) => {}
            }
        }
        Ok(())
    }

    /// Encoding width of the encrypted input: every first-stage accumulator (router, W1, W3)
    /// must be readable through its top `message_bits` bits.
    pub fn input_width(&self) -> u32 {
        let (d, m) = (self.config.d.0, self.quant.message_bits);
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        let mut ranges = vec![affine_range(
            &self.router,
            self.router_bias.as_deref(),
            d,
            lo,
            hi,
        )];
        for x in &self.experts {
            ranges.push(affine_range(&x.w1, x.b1.as_deref(), d, lo, hi));
            if let Some(w3) = &x.w3 {
                ranges.push(affine_range(w3, x.b3.as_deref(), d, lo, hi));
            }
        }
        let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
        quant::read_width(lo, hi, m)
    }

    /// Shift of the first-stage requantization (`input_width - message_bits`).
    pub fn input_shift(&self) -> u32 {
        self.input_width() - self.quant.message_bits
    }

    /// Worst-case range of one expert output `W2 a + b2`.
    pub fn expert_output_range(&self) -> (i128, i128) {
        let (lo, hi) = self.quant.hidden_range(self.config.ffn);
        let h = self.config.h.0;
        let mut r = (0i128, 0i128);
        for x in &self.experts {
            let (a, b) = affine_range(&x.w2, x.b2.as_deref(), h, lo, hi);
            r = (r.0.min(a), r.1.max(b));
        }
        r
    }

    /// Encoding width of an expert's output accumulator `W2 a + b2`, read back to m bits.
    pub fn expert_output_width(&self) -> u32 {
        let (lo, hi) = self.expert_output_range();
        quant::read_width(lo, hi, self.quant.message_bits)
    }

    /// Shift of the expert-output requantization.
    pub fn expert_output_shift(&self) -> u32 {
        self.expert_output_width() - self.quant.message_bits
    }

    /// Whether the gates are public constants (Mixtral with k = 1: the gate is 1.0).
    pub fn constant_gates(&self) -> bool {
        self.config.top_k.0 == 1 && self.config.gating == Gating::SoftmaxSelected
    }

    /// Encoding of a requantized slot output: signed m + 1 bits, so that the difference of two
    /// slot outputs (Mixtral top-2 gate combination) stays representable.
    pub fn output_encoding(&self) -> veilmoe_engine::Encoding {
        veilmoe_engine::Encoding::signed(self.quant.message_bits + 1)
    }

    /// Random weights for tests and benchmarks: each row has a few non-zero entries so that
    /// the worst-case accumulator is close to typical ones and requantization keeps resolution.
    pub fn random(
        config: MoeConfig,
        quant: QuantParams,
        seed: u64,
        with_bias: bool,
    ) -> QuantizedMoe {
        let mut rng = SplitMix(seed);
        let (d, h, e) = (config.d.0, config.h.0, config.experts.0);
        let mut sparse = |rows: usize, cols: usize, nz: usize, mag: i64| -> Vec<i64> {
            let mut w = vec![0i64; rows * cols];
            for r in 0..rows {
                for _ in 0..nz.min(cols) {
                    let c = rng.below(cols as u64) as usize;
                    w[r * cols + c] = rng.range(-mag, mag);
                }
            }
            w
        };
        let router = sparse(e, d, 4, 3);
        let mut experts = Vec::with_capacity(e);
        for _ in 0..e {
            let w1 = sparse(h, d, 4, 3);
            let w3 = matches!(config.ffn, FfnKind::GatedSilu).then(|| sparse(h, d, 4, 3));
            let w2 = sparse(d, h, 6, 1);
            experts.push((w1, w3, w2));
        }
        let mut bias = |n: usize, mag: i64| -> Option<Vec<i64>> {
            with_bias.then(|| (0..n).map(|_| rng.range(-mag, mag)).collect())
        };
        let router_bias = bias(e, 4);
        let experts = experts
            .into_iter()
            .map(|(w1, w3, w2)| ExpertWeights {
                b1: bias(h, 4),
                b3: w3.as_ref().and_then(|_| bias(h, 4)),
                w1,
                w3,
                b2: bias(d, 4),
                w2,
            })
            .collect();
        QuantizedMoe {
            config,
            quant,
            router,
            router_bias,
            experts,
        }
    }
}

/// Small deterministic generator for synthetic weights and inputs (not for crypto).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// A standard normal sample (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((self.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
