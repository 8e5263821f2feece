//! [`FloatMoeModel`]: one MoE block in float, with its optional head, and its forward pass
//! (routing, experts, residual, head) on raw features.

use super::load::Family;
use crate::arch::{FfnKind, Gating, MoeConfig};
use ndarray::{Array1, Array2};

/// One expert's float weights, `[out, in]` as PyTorch's `nn.Linear` stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatExpert {
    /// `[h, d]`: Mixtral `w1`, Qwen `gate_proj`, Switch `wi`.
    pub w1: Array2<f32>,
    pub b1: Option<Array1<f32>>,
    /// `[h, d]`, gated FFNs only: Mixtral `w3`, Qwen `up_proj`.
    pub w3: Option<Array2<f32>>,
    pub b3: Option<Array1<f32>>,
    /// `[d, h]`: Mixtral `w2`, Qwen `down_proj`, Switch `wo`.
    pub w2: Array2<f32>,
    pub b2: Option<Array1<f32>>,
}

/// Qwen2-MoE's shared expert: a gated FFN every token uses, scaled by its own sigmoid gate
/// (`y = routed + sigmoid(gate . x) * FFN_shared(x)`). It carries no routing secret, but its
/// gate depends on the token, so the gate is evaluated under encryption like a routed gate.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatSharedExpert {
    /// The FFN, `[h_shared, d]` / `[d, h_shared]` (Qwen `shared_expert.{gate,up,down}_proj`).
    pub ffn: FloatExpert,
    /// `[d]`: Qwen `shared_expert_gate.weight` (one output row, no bias).
    pub gate: Array1<f32>,
}

impl FloatSharedExpert {
    /// Hidden units of the shared FFN (Qwen's `shared_expert_intermediate_size`).
    pub fn hidden(&self) -> usize {
        self.ffn.w1.nrows()
    }
}

/// The classification head the client applies in the clear.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatHead {
    /// `[classes, d]`
    pub weight: Array2<f32>,
    pub bias: Option<Array1<f32>>,
}

/// One MoE block of a checkpoint, in float, with its optional head.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatMoeModel {
    pub family: Family,
    /// Where it was loaded from (a directory, or a label for embedded bytes).
    pub origin: String,
    /// Layer index of the block in the checkpoint.
    pub layer: usize,
    /// Architecture: d, h, E, k, FFN kind, gating.
    pub config: MoeConfig,
    /// `[E, d]`
    pub router: Array2<f32>,
    pub router_bias: Option<Array1<f32>>,
    pub experts: Vec<FloatExpert>,
    /// Qwen2-MoE's shared expert, evaluated beside the routed ones.
    pub shared: Option<FloatSharedExpert>,
    pub head: Option<FloatHead>,
    /// Whether the head reads `x + MoE(x)`.
    pub residual: bool,
    /// The block's real input is `raw * input_scale`.
    pub input_scale: f64,
    /// The quantization the model was trained for, if it declares one.
    pub quantization: Option<crate::quantize::QuantChoice>,
    /// Parts of the checkpoint's block that veilmoe does not evaluate, each named: commands
    /// print them as warnings, never drop them silently.
    pub not_evaluated: Vec<String>,
}

/// Softmax in f32, as the float forward pass runs.
fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Intermediate values of one expert on one input (for calibration and training).
#[derive(Debug, Clone)]
pub struct ExpertTrace {
    /// `W1 x + b1` (pre-activation).
    pub u: Array1<f32>,
    /// `W3 x + b3` (gated FFNs).
    pub v: Option<Array1<f32>>,
    /// Hidden activations fed to W2.
    pub a: Array1<f32>,
    /// `W2 a + b2`.
    pub o: Array1<f32>,
}

impl FloatMoeModel {
    /// Number of input features (d).
    pub fn features(&self) -> usize {
        self.config.d.0
    }

    /// Number of classes of the head, if there is one.
    pub fn classes(&self) -> Option<usize> {
        self.head.as_ref().map(|h| h.weight.nrows())
    }

    /// The block's real input: `raw * input_scale`.
    pub fn model_input(&self, raw: &[f32]) -> Array1<f32> {
        raw.iter()
            .map(|&v| (v as f64 * self.input_scale) as f32)
            .collect()
    }

    /// Router logits `Wr x + br` on the block's real input.
    pub fn router_logits(&self, x: &Array1<f32>) -> Array1<f32> {
        let mut r = self.router.dot(x);
        if let Some(b) = &self.router_bias {
            r += b;
        }
        r
    }

    /// Selected experts (highest logit first, ties to the lowest index) and their gates.
    pub fn route(&self, x: &Array1<f32>) -> (Vec<usize>, Vec<f32>) {
        let logits = self.router_logits(x).to_vec();
        let sel = crate::math::top_k(&logits, self.config.top_k.0);
        let gates = match self.config.gating {
            Gating::SoftmaxSelected => softmax(&sel.iter().map(|&i| logits[i]).collect::<Vec<_>>()),
            Gating::SoftmaxThenTopK => {
                let p = softmax(&logits);
                sel.iter().map(|&i| p[i]).collect()
            }
        };
        (sel, gates)
    }

    /// Expert `e` on the block's real input, with its intermediates.
    pub fn expert_trace(&self, e: usize, x: &Array1<f32>) -> ExpertTrace {
        self.ffn_trace(&self.experts[e], x)
    }

    /// Every FFN of the block: the routed experts, then the shared expert (the order the
    /// quantizer stacks them in).
    pub fn ffns(&self) -> impl Iterator<Item = &FloatExpert> {
        self.experts
            .iter()
            .chain(self.shared.as_ref().map(|s| &s.ffn))
    }

    /// The shared expert's sigmoid gate on the block's real input (`None` without one).
    pub fn shared_gate(&self, x: &Array1<f32>) -> Option<f32> {
        self.shared
            .as_ref()
            .map(|s| crate::math::sigmoid(s.gate.dot(x) as f64) as f32)
    }

    /// Any FFN of the block's kind (a routed expert or the shared one) on the block's input.
    pub fn ffn_trace(&self, w: &FloatExpert, x: &Array1<f32>) -> ExpertTrace {
        let add = |mut a: Array1<f32>, b: &Option<Array1<f32>>| {
            if let Some(b) = b {
                a += b;
            }
            a
        };
        let u = add(w.w1.dot(x), &w.b1);
        let (v, a) = match (self.config.ffn, &w.w3) {
            (FfnKind::GatedSilu, Some(w3)) => {
                let v = add(w3.dot(x), &w.b3);
                let a = u.mapv(silu) * &v;
                (Some(v), a)
            }
            (FfnKind::Plain(act), _) => (None, u.mapv(|t| act.apply(t as f64) as f32)),
            // a gated model always has w3 (checked when loading)
            (FfnKind::GatedSilu, None) => (None, u.mapv(silu)),
        };
        let o = add(w.w2.dot(&a), &w.b2);
        ExpertTrace { u, v, a, o }
    }

    /// The block output `y = sum_slots gate * FFN(x)` (plus the gated shared expert) on raw
    /// features.
    pub fn block_output(&self, raw: &[f32]) -> Vec<f32> {
        let x = self.model_input(raw);
        self.block_output_of(&x).to_vec()
    }

    fn block_output_of(&self, x: &Array1<f32>) -> Array1<f32> {
        let (sel, gates) = self.route(x);
        let mut y = Array1::<f32>::zeros(self.config.d.0);
        for (&e, &g) in sel.iter().zip(&gates) {
            y.scaled_add(g, &self.expert_trace(e, x).o);
        }
        if let (Some(s), Some(g)) = (&self.shared, self.shared_gate(x)) {
            y.scaled_add(g, &self.ffn_trace(&s.ffn, x).o);
        }
        y
    }

    /// The model's outputs on raw features: class logits with a head, else the block output
    /// (plus the input when the model is residual).
    pub fn forward(&self, raw: &[f32]) -> Vec<f32> {
        let x = self.model_input(raw);
        let mut hidden = self.block_output_of(&x);
        if self.residual {
            hidden += &x;
        }
        match &self.head {
            None => hidden.to_vec(),
            Some(h) => {
                let mut out = h.weight.dot(&hidden);
                if let Some(b) = &h.bias {
                    out += b;
                }
                out.to_vec()
            }
        }
    }

    /// The predicted class (argmax of [`FloatMoeModel::forward`], ties to the lowest index).
    pub fn predict(&self, raw: &[f32]) -> usize {
        let out = self.forward(raw);
        crate::math::argmax(&out)
    }

    /// A Mixtral-format block with Gaussian weights of standard deviation `std` / sqrt(fan-in)
    /// and no head, as a freshly initialised checkpoint has (for tests and benchmarks: a model
    /// not trained for veilmoe's reads). A plain FFN gets no W3.
    pub fn random(config: MoeConfig, std: f64, seed: u64) -> FloatMoeModel {
        let mut rng = crate::random::SplitMix(seed);
        let (d, h, e) = (config.d.0, config.h.0, config.experts.0);
        let mut mat = |r: usize, c: usize| {
            let s = std / (c as f64).sqrt();
            Array2::from_shape_fn((r, c), |_| (rng.gaussian() * s) as f32)
        };
        let router = mat(e, d);
        let experts = (0..e)
            .map(|_| FloatExpert {
                w1: mat(h, d),
                b1: None,
                w3: (config.ffn == FfnKind::GatedSilu).then(|| mat(h, d)),
                b3: None,
                w2: mat(d, h),
                b2: None,
            })
            .collect();
        FloatMoeModel {
            family: Family::Mixtral,
            origin: format!("random (seed {seed})"),
            layer: 0,
            config,
            router,
            router_bias: None,
            experts,
            shared: None,
            head: None,
            residual: false,
            input_scale: 1.0,
            quantization: None,
            not_evaluated: Vec::new(),
        }
    }

    /// Checks that the weights match the configuration (for models built in code).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let c = &self.config;
        let (d, h, e) = (c.d.0, c.h.0, c.experts.0);
        let shape = |what: &str, a: &Array2<f32>, r: usize, cc: usize| {
            if a.dim() != (r, cc) {
                Err(format!(
                    "{what}: shape {:?}, expected {:?}",
                    a.dim(),
                    (r, cc)
                ))
            } else {
                Ok(())
            }
        };
        let len = |what: &str, a: &Option<Array1<f32>>, n: usize| match a {
            Some(a) if a.len() != n => Err(format!("{what}: {} values, expected {n}", a.len())),
            _ => Ok(()),
        };
        shape("router", &self.router, e, d)?;
        len("router bias", &self.router_bias, e)?;
        if self.experts.len() != e {
            return Err(format!("{} experts, expected {e}", self.experts.len()));
        }
        for (i, x) in self.experts.iter().enumerate() {
            shape(&format!("expert {i} w1"), &x.w1, h, d)?;
            shape(&format!("expert {i} w2"), &x.w2, d, h)?;
            len(&format!("expert {i} b1"), &x.b1, h)?;
            len(&format!("expert {i} b2"), &x.b2, d)?;
            match (c.ffn, &x.w3) {
                (FfnKind::GatedSilu, Some(w3)) => {
                    shape(&format!("expert {i} w3"), w3, h, d)?;
                    len(&format!("expert {i} b3"), &x.b3, h)?;
                }
                (FfnKind::GatedSilu, None) => return Err(format!("expert {i}: no w3")),
                (FfnKind::Plain(_), Some(_)) => {
                    return Err(format!("expert {i}: w3 on a plain FFN"))
                }
                (FfnKind::Plain(_), None) => {}
            }
        }
        if let Some(s) = &self.shared {
            let hs = s.hidden();
            shape("shared expert w1", &s.ffn.w1, hs, d)?;
            shape("shared expert w2", &s.ffn.w2, d, hs)?;
            len("shared expert b1", &s.ffn.b1, hs)?;
            len("shared expert b2", &s.ffn.b2, d)?;
            match (c.ffn, &s.ffn.w3) {
                (FfnKind::GatedSilu, Some(w3)) => shape("shared expert w3", w3, hs, d)?,
                (FfnKind::Plain(_), None) => {}
                _ => return Err("shared expert: w3 must match the FFN kind".into()),
            }
            if s.gate.len() != d {
                return Err(format!(
                    "shared expert gate: {} values, expected {d}",
                    s.gate.len()
                ));
            }
        }
        if let Some(hd) = &self.head {
            if hd.weight.ncols() != d || hd.weight.nrows() == 0 {
                return Err(format!(
                    "head: shape {:?}, expected [classes, {d}]",
                    hd.weight.dim()
                ));
            }
            len("head bias", &hd.bias, hd.weight.nrows())?;
        }
        Ok(())
    }
}
