//! The trained architecture, its flat parameter vector, and the float forward and backward
//! pieces both phases share (head, second stage, first stage, router).
//!
//! The parameters are one `Vec<f64>` of [`Layout::total`] values, in this order: the router
//! `[E, D]`, W1 `[E, H, D]`, W3 `[E, H, D]`, W2 `[E, D, H]`, the head's weight `[C, D]` and its bias `[C]`
//! (row-major, as [`to_model`] reads them into a [`FloatMoeModel`]).

use crate::arch::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
use crate::checkpoint::{Family, FloatExpert, FloatHead, FloatMoeModel};
use crate::math::sigmoid;
use crate::random::SplitMix;
use ndarray::{Array1, Array2};

/// Pixels of an 8x8 digit (d).
pub(super) const D: usize = 64;
/// The default experts (E) and hidden units (h): the embedded demo model's shape.
const DEMO_EXPERTS: usize = 4;
const DEMO_HIDDEN: usize = 16;
/// Classes.
pub(super) const C: usize = 10;
/// The block's real input is `raw * INPUT_SCALE` (pixels 0..16 to 0..1).
pub(super) const INPUT_SCALE: f64 = 1.0 / 16.0;
/// Bits of the presets the model is trained for.
pub(super) const MESSAGE_BITS: u32 = 4;
/// Largest trainable expert count and hidden width: the quantizer and the encrypted path take
/// more, but the training's cost grows with `E * h` and nothing larger has been measured.
pub const MAX_TRAIN_EXPERTS: usize = 16;
pub const MAX_TRAIN_HIDDEN: usize = 128;

/// The trained block's shape: experts (E) and hidden units per expert (h); d = 64 pixels and
/// the 10 classes are the digits'. The default is the demo model's (E = 4, h = 16); the pool
/// trains smaller and larger models with the same recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainShape {
    pub experts: usize,
    pub hidden: usize,
    /// Whether the block adds its input to the expert output (the demo's does: its head leans
    /// on the exact input and uses the experts as a correction, so a wider block barely helps;
    /// without it, accuracy grows with the block, as a pool of models of different cost needs).
    pub residual: bool,
}

impl Default for TrainShape {
    fn default() -> Self {
        TrainShape {
            experts: DEMO_EXPERTS,
            hidden: DEMO_HIDDEN,
            residual: true,
        }
    }
}

/// Where each tensor of the flat parameter vector starts, for one [`TrainShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Experts (E).
    pub(super) e: usize,
    /// Hidden units of an expert (h).
    pub(super) h: usize,
    /// Whether the head's input carries the block's input ([`TrainShape::residual`]).
    pub(super) residual: bool,
    pub(super) wr: usize,
    pub(super) w1: usize,
    pub(super) w3: usize,
    pub(super) w2: usize,
    pub(super) hw: usize,
    pub(super) hb: usize,
    /// Number of parameters.
    pub(super) total: usize,
}

impl Layout {
    pub(super) fn new(shape: TrainShape) -> Layout {
        let (e, h) = (shape.experts, shape.hidden);
        let wr = 0;
        let w1 = wr + e * D;
        let w3 = w1 + e * h * D;
        let w2 = w3 + e * h * D;
        let hw = w2 + e * D * h;
        let hb = hw + C * D;
        Layout {
            e,
            h,
            residual: shape.residual,
            wr,
            w1,
            w3,
            w2,
            hw,
            hb,
            total: hb + C,
        }
    }

    /// The head's input from the block's input `x` and the expert output `y` at `i`.
    pub(super) fn head_input(&self, x: f64, y: f64) -> f64 {
        if self.residual {
            x + y
        } else {
            y
        }
    }

    pub(super) fn w1(&self, p: &[f64], e: usize, j: usize, k: usize) -> f64 {
        p[self.w1 + (e * self.h + j) * D + k]
    }
    pub(super) fn w3(&self, p: &[f64], e: usize, j: usize, k: usize) -> f64 {
        p[self.w3 + (e * self.h + j) * D + k]
    }
    pub(super) fn w2(&self, p: &[f64], e: usize, i: usize, j: usize) -> f64 {
        p[self.w2 + (e * D + i) * self.h + j]
    }
}

/// `x * sigmoid(x)` (in this form: the arithmetic the trained weights were produced with).
pub(super) fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}
pub(super) fn silu_grad(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}
pub(super) fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Initial parameters from `seed`: small Gaussian router rows, W1 and W3 at `1/sqrt(D)`, W2 at
/// `0.1/sqrt(h)` (the residual path carries the input at first; `1/sqrt(h)` without one), a
/// zero head.
pub(super) fn init(l: &Layout, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix(seed);
    let mut p = vec![0.0; l.total];
    for v in &mut p[l.wr..l.w1] {
        *v = 0.1 * rng.gaussian();
    }
    for v in &mut p[l.w1..l.w2] {
        *v = rng.gaussian() / (D as f64).sqrt();
    }
    let w2_std = if l.residual { 0.1 } else { 1.0 };
    for v in &mut p[l.w2..l.hw] {
        *v = w2_std * rng.gaussian() / (l.h as f64).sqrt();
    }
    p
}

/// The parameters as a Mixtral-family [`FloatMoeModel`] (f32, top-1, no biases but
/// the head's; no declared quantization).
pub(super) fn to_model(l: &Layout, p: &[f64]) -> FloatMoeModel {
    let mat = |off: usize, r: usize, c: usize| {
        Array2::from_shape_fn((r, c), |(i, j)| p[off + i * c + j] as f32)
    };
    FloatMoeModel {
        family: Family::Mixtral,
        origin: "train_digits".into(),
        layer: 0,
        config: MoeConfig {
            d: ModelDim(D),
            h: HiddenDim(l.h),
            experts: ExpertCount(l.e),
            top_k: TopK(1),
            ffn: FfnKind::GatedSilu,
            gating: Gating::SoftmaxSelected,
        },
        router: mat(l.wr, l.e, D),
        router_bias: None,
        shared: None,
        not_evaluated: Vec::new(),
        experts: (0..l.e)
            .map(|e| FloatExpert {
                w1: mat(l.w1 + e * l.h * D, l.h, D),
                b1: None,
                w3: Some(mat(l.w3 + e * l.h * D, l.h, D)),
                b3: None,
                w2: mat(l.w2 + e * D * l.h, D, l.h),
                b2: None,
            })
            .collect(),
        head: Some(FloatHead {
            weight: mat(l.hw, C, D),
            bias: Some(Array1::from_iter(
                p[l.hb..l.hb + C].iter().map(|&v| v as f32),
            )),
        }),
        residual: l.residual,
        input_scale: INPUT_SCALE,
        quantization: None,
    }
}

/// Head on `z`: class probabilities (softmax of the logits) and the cross-entropy of `label`.
pub(super) fn head(l: &Layout, p: &[f64], z: &[f64], label: usize) -> (Vec<f64>, f64) {
    let logits: Vec<f64> = (0..C)
        .map(|c| p[l.hb + c] + (0..D).map(|k| p[l.hw + c * D + k] * z[k]).sum::<f64>())
        .collect();
    let q = softmax(&logits);
    let loss = -q[label].max(1e-12).ln();
    (q, loss)
}

/// Backward through the head (weight `w`) and the expert's second stage; returns the gradient
/// at the hidden activations `a`.
pub(super) fn back_head_w2(
    (l, p): (&Layout, &[f64]),
    g: &mut [f64],
    e: usize,
    (q, label): (&[f64], usize),
    z: &[f64],
    a: &[f64],
    w: f64,
) -> Vec<f64> {
    let mut g_z = vec![0.0; D];
    for c in 0..C {
        let gl = w * (q[c] - (c == label) as u8 as f64);
        g[l.hb + c] += gl;
        for k in 0..D {
            g[l.hw + c * D + k] += gl * z[k];
            g_z[k] += gl * p[l.hw + c * D + k];
        }
    }
    let mut g_a = vec![0.0; l.h];
    for i in 0..D {
        for j in 0..l.h {
            g[l.w2 + (e * D + i) * l.h + j] += g_z[i] * a[j];
            g_a[j] += l.w2(p, e, i, j) * g_z[i];
        }
    }
    g_a
}

/// Accumulates the W1 and W3 gradients of expert `e` from the gradients at its pre-activations
/// (`g_u`: silu branch, `g_v`: linear branch) on input `x`.
pub(super) fn first_stage_grad(
    l: &Layout,
    g: &mut [f64],
    e: usize,
    x: &[f64],
    g_u: &[f64],
    g_v: &[f64],
) {
    for j in 0..l.h {
        for k in 0..D {
            g[l.w1 + (e * l.h + j) * D + k] += g_u[j] * x[k];
            g[l.w3 + (e * l.h + j) * D + k] += g_v[j] * x[k];
        }
    }
}

/// Router gradient of `sum_e p_e L_e` plus the balance term, for one record.
pub(super) fn router_grad(
    l: &Layout,
    g: &mut [f64],
    x: &[f64],
    pr: &[f64],
    losses: &[f64],
    g_p_extra: &[f64],
) {
    let lbar: f64 = pr.iter().zip(losses).map(|(p, l)| p * l).sum();
    // d/dr_e of sum_f p_f c_f = p_e (c_e - sum_f p_f c_f), with c = L + balance gradient
    let cbar: f64 = pr.iter().zip(g_p_extra).map(|(p, c)| p * c).sum::<f64>() + lbar;
    for e in 0..l.e {
        let gr = pr[e] * (losses[e] + g_p_extra[e] - cbar);
        for k in 0..D {
            g[l.wr + e * D + k] += gr * x[k];
        }
    }
}

/// Routing probabilities `softmax(Wr x)` on the block's real input.
pub(super) fn router_probs(l: &Layout, p: &[f64], x: &[f64]) -> Vec<f64> {
    let r: Vec<f64> = (0..l.e)
        .map(|e| (0..D).map(|k| p[l.wr + e * D + k] * x[k]).sum())
        .collect();
    softmax(&r)
}
