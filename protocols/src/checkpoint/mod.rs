//! Hugging Face-format MoE checkpoints: one MoE block as a float model.
//!
//! A model directory holds a `config.json` and one or more `*.safetensors` files (f32, f16,
//! bf16 or f64 tensors, all converted to f32). `config.json`'s `model_type` picks the family;
//! each family lives in its own file, with a `Config` deserialized straight from config.json
//! and the tensor names kept as the checkpoint spells them:
//!
//! | `model_type` | file | FFN | gating |
//! |---|---|---|---|
//! | `mixtral` | [`mixtral`] | gated SiLU (`w1`, `w3`, `w2`) | softmax over the top-k logits |
//! | `qwen2_moe`, `olmoe` | [`qwen2_moe`] | gated SiLU (`gate_proj`, `up_proj`, `down_proj`) | softmax over all experts, then top-k (renormalized when `norm_topk_prob`) |
//! | `switch_transformers` | [`switch`] | `wo act(wi x)` (`dense_act_fn`) | softmax over all experts, top-1 |
//!
//! **veilmoe evaluates one MoE block**: the router, the top-k selection, the gates and the
//! experts of a single layer, optionally around a residual connection and followed by a
//! classification head that the client applies in the clear. The rest of the transformer
//! (attention, norms, embeddings, the other layers) is not evaluated: the block's input is the
//! raw feature vector. The block is the first MoE layer found (lowest index) unless a layer is
//! named; naming a layer that holds no MoE block is an error that lists the ones present.
//!
//! Optional tensors beside the block:
//! - a classification head `score.weight` `[classes, d]` (+ `score.bias`), as Hugging Face's
//!   `*ForSequenceClassification` models name it, or `classifier.weight` / `classifier.bias`;
//!
//! and an optional `"veilmoe"` object in config.json:
//!
//! ```json
//! "veilmoe": { "residual": true, "input_scale": 0.0625 }
//! ```
//!
//! - `residual` (default `false`): the head reads `x + MoE(x)` instead of `MoE(x)`;
//! - `input_scale` (default `1.0`): the block's real input is `raw * input_scale`, where `raw`
//!   is the feature vector as the data file holds it (e.g. pixels 0..16 with `0.0625`);
//! - `quantization` (optional): the quantization choices a quantization-aware trained model
//!   was trained for ([`crate::quantize::QuantChoice`]'s fields, e.g. `{"w1_prune": 0.05,
//!   "act_clip": 0.35, "w2_top": 3.0, "w2_l1": 3, "logit_zero_point": 2}`); the quantizer
//!   uses them instead of searching.
//!
//! Unknown keys in the `"veilmoe"` object are refused, so that a typo is not silently ignored.

pub mod mixtral;
pub mod qwen2_moe;
mod store;
pub mod switch;

pub use store::{safetensors_bytes, StoredDtype};

use crate::model::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
use crate::quant::Activation;
use ndarray::{Array1, Array2};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use store::TensorStore;
use thiserror::Error;

/// Why a checkpoint cannot be loaded. Every variant names the file, key or tensor at fault.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid config.json: {reason}")]
    Config { origin: String, reason: String },
    #[error("{origin}: config.json lacks `{key}`, which model_type `{model_type}` needs")]
    MissingKey {
        origin: String,
        model_type: String,
        key: String,
    },
    #[error("{origin}: unknown model_type `{model_type}` (supported: mixtral, qwen2_moe, olmoe, switch_transformers)")]
    UnknownModelType { origin: String, model_type: String },
    #[error("{origin}: unsupported model: {reason}")]
    Unsupported { origin: String, reason: String },
    #[error("{dir}: no *.safetensors file")]
    NoWeights { dir: String },
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors { file: String, reason: String },
    #[error("tensor `{name}` is missing from {dir}")]
    MissingTensor { name: String, dir: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; f32, f16, bf16 or f64 are supported")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` has a value that is not finite (element {index})")]
    NonFinite { name: String, index: usize },
    #[error("tensor `{name}` is defined in both {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    #[error("{dir}: no MoE layer found (no tensor named like `{pattern}`)")]
    NoMoeLayer { dir: String, pattern: String },
    #[error("{dir}: layer {layer} has no MoE block (MoE layers: {available:?})")]
    MissingLayer {
        dir: String,
        layer: usize,
        available: Vec<usize>,
    },
}

/// Result of checkpoint loading.
pub type Result<T> = std::result::Result<T, CheckpointError>;

/// Model family, from config.json's `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Olmoe,
    SwitchTransformers,
}

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "mixtral" => Some(Family::Mixtral),
            "qwen2_moe" => Some(Family::Qwen2Moe),
            "olmoe" => Some(Family::Olmoe),
            "switch_transformers" => Some(Family::SwitchTransformers),
            _ => None,
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Olmoe => "olmoe",
            Family::SwitchTransformers => "switch_transformers",
        }
    }
}

/// The `"veilmoe"` object of config.json (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeilmoeExtras {
    #[serde(default)]
    pub residual: bool,
    #[serde(default = "one")]
    pub input_scale: f64,
    /// The quantization the model was trained for (see [`crate::quantize::QuantChoice`]).
    #[serde(default)]
    pub quantization: Option<crate::quantize::QuantChoice>,
}

fn one() -> f64 {
    1.0
}

impl Default for VeilmoeExtras {
    fn default() -> Self {
        VeilmoeExtras {
            residual: false,
            input_scale: 1.0,
            quantization: None,
        }
    }
}

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
    pub head: Option<FloatHead>,
    /// Whether the head reads `x + MoE(x)`.
    pub residual: bool,
    /// The block's real input is `raw * input_scale`.
    pub input_scale: f64,
    /// The quantization the model was trained for, if it declares one.
    pub quantization: Option<crate::quantize::QuantChoice>,
}

/// What a family file hands back: the block of one layer.
pub(crate) struct Block {
    pub config: MoeConfig,
    pub layer: usize,
    pub router: Array2<f32>,
    pub router_bias: Option<Array1<f32>>,
    pub experts: Vec<FloatExpert>,
}

/// Deserializes a family's `Config`, after checking its required keys are present, so that a
/// missing key is reported by name rather than by serde's position message.
pub(crate) fn family_config<T: DeserializeOwned>(
    value: &serde_json::Value,
    origin: &str,
    model_type: &str,
    required: &[&str],
) -> Result<T> {
    for key in required {
        if value.get(key).is_none_or(|v| v.is_null()) {
            return Err(CheckpointError::MissingKey {
                origin: origin.to_string(),
                model_type: model_type.to_string(),
                key: key.to_string(),
            });
        }
    }
    serde_json::from_value(value.clone()).map_err(|e| CheckpointError::Config {
        origin: origin.to_string(),
        reason: e.to_string(),
    })
}

/// The MoE layer to load: `requested`, or the lowest of `available`.
pub(crate) fn pick_layer(
    origin: &str,
    available: &[usize],
    requested: Option<usize>,
    pattern: &str,
) -> Result<usize> {
    match (requested, available.first()) {
        (_, None) => Err(CheckpointError::NoMoeLayer {
            dir: origin.to_string(),
            pattern: pattern.to_string(),
        }),
        (None, Some(&l)) => Ok(l),
        (Some(l), Some(_)) if available.contains(&l) => Ok(l),
        (Some(l), Some(_)) => Err(CheckpointError::MissingLayer {
            dir: origin.to_string(),
            layer: l,
            available: available.to_vec(),
        }),
    }
}

/// Hugging Face activation names veilmoe can evaluate.
pub(crate) fn activation(origin: &str, name: &str) -> Result<Activation> {
    match name {
        "relu" => Ok(Activation::Relu),
        "silu" | "swish" => Ok(Activation::Silu),
        // veilmoe's GELU is the tanh approximation; `gelu` (erf) differs by < 1e-3.
        "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::Gelu),
        other => Err(CheckpointError::Unsupported {
            origin: origin.to_string(),
            reason: format!("activation `{other}`"),
        }),
    }
}

/// Checks the limits of what one block can be (positive sizes, 1 <= k <= E).
/// How a gated-SiLU family names one MoE block's tensors: `{prefix}{L}{block}` then
/// `.{router}`, `.experts.{i}.{w1}` (silu branch), `.{w3}` (linear branch), `.{w2}` (down).
pub(crate) struct GatedNames {
    pub prefix: &'static str,
    pub block: &'static str,
    pub router: &'static str,
    pub w1: &'static str,
    pub w3: &'static str,
    pub w2: &'static str,
}

/// Loads a gated-SiLU MoE block (Mixtral, Qwen2-MoE, OLMoE: the same structure under
/// different tensor names): checks the activation, picks the layer, reads router and experts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_silu_block(
    store: &mut TensorStore<'_>,
    family: &str,
    hidden_act: &str,
    names: &GatedNames,
    layer: Option<usize>,
    (d, h, e, k): (usize, usize, usize, usize),
    gating: Gating,
) -> Result<Block> {
    let origin = store.origin().to_string();
    check_sizes(&origin, d, h, e, k)?;
    if activation(&origin, hidden_act)? != Activation::Silu {
        return Err(CheckpointError::Unsupported {
            origin,
            reason: format!("{family} experts with `{hidden_act}` (gated SiLU only)"),
        });
    }
    let router_suffix = format!("{}.{}", names.block, names.router);
    let layers = store.layers_with(names.prefix, &router_suffix);
    let l = pick_layer(
        &origin,
        &layers,
        layer,
        &format!("{}{{L}}{router_suffix}", names.prefix),
    )?;
    let p = format!("{}{l}{}", names.prefix, names.block);
    let router = store.matrix(&format!("{p}.{}", names.router), e, d)?;
    let mut experts = Vec::with_capacity(e);
    for i in 0..e {
        let x = format!("{p}.experts.{i}");
        experts.push(FloatExpert {
            w1: store.matrix(&format!("{x}.{}", names.w1), h, d)?,
            b1: None,
            w3: Some(store.matrix(&format!("{x}.{}", names.w3), h, d)?),
            b3: None,
            w2: store.matrix(&format!("{x}.{}", names.w2), d, h)?,
            b2: None,
        });
    }
    Ok(Block {
        config: MoeConfig {
            d: ModelDim(d),
            h: HiddenDim(h),
            experts: ExpertCount(e),
            top_k: TopK(k),
            ffn: FfnKind::GatedSilu,
            gating,
        },
        layer: l,
        router,
        router_bias: None,
        experts,
    })
}

pub(crate) fn check_sizes(origin: &str, d: usize, h: usize, e: usize, k: usize) -> Result<()> {
    if d == 0 || h == 0 || e == 0 || k == 0 || k > e {
        return Err(CheckpointError::Config {
            origin: origin.to_string(),
            reason: format!(
                "sizes must be positive with k <= E: d = {d}, h = {h}, E = {e}, k = {k}"
            ),
        });
    }
    Ok(())
}

fn load_from_store(
    config_json: &[u8],
    mut store: TensorStore<'_>,
    layer: Option<usize>,
) -> Result<FloatMoeModel> {
    let origin = store.origin().to_string();
    let bad = |reason: String| CheckpointError::Config {
        origin: origin.clone(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| CheckpointError::MissingKey {
            origin: origin.clone(),
            model_type: "(any)".into(),
            key: "model_type".into(),
        })?;
    let family =
        Family::from_model_type(model_type).ok_or_else(|| CheckpointError::UnknownModelType {
            origin: origin.clone(),
            model_type: model_type.to_string(),
        })?;
    let extras: VeilmoeExtras = match value.get("veilmoe") {
        None | Some(serde_json::Value::Null) => VeilmoeExtras::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("`veilmoe`: {e}")))?,
    };
    if !(extras.input_scale.is_finite() && extras.input_scale > 0.0) {
        return Err(bad(format!(
            "`veilmoe.input_scale` must be positive and finite, got {}",
            extras.input_scale
        )));
    }
    let block = match family {
        Family::Mixtral => mixtral::load(&value, &mut store, layer)?,
        Family::Qwen2Moe | Family::Olmoe => qwen2_moe::load(&value, model_type, &mut store, layer)?,
        Family::SwitchTransformers => switch::load(&value, &mut store, layer)?,
    };
    let head = load_head(&mut store, block.config.d.0)?;
    Ok(FloatMoeModel {
        family,
        origin,
        layer: block.layer,
        config: block.config,
        router: block.router,
        router_bias: block.router_bias,
        experts: block.experts,
        head,
        residual: extras.residual,
        input_scale: extras.input_scale,
        quantization: extras.quantization,
    })
}

/// `score.*` (sequence classification) or `classifier.*`, if present.
fn load_head(store: &mut TensorStore<'_>, d: usize) -> Result<Option<FloatHead>> {
    for prefix in ["score", "classifier"] {
        let w = format!("{prefix}.weight");
        if let Some(shape) = store.shape(&w).map(|s| s.to_vec()) {
            let classes = match shape.as_slice() {
                [c, _] => *c,
                _ => 0,
            };
            if classes == 0 {
                return Err(CheckpointError::Shape {
                    name: w,
                    expected: vec![shape.first().copied().unwrap_or(0).max(1), d],
                    found: shape,
                });
            }
            let weight = store.matrix(&w, classes, d)?;
            let bias = store.optional_vector(&format!("{prefix}.bias"), classes)?;
            return Ok(Some(FloatHead { weight, bias }));
        }
    }
    Ok(None)
}

/// Indices of the `k` largest values, ties to the lowest index (as the encrypted tournament).
pub fn top_k_f32(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

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
    /// Loads the first MoE block of a model directory.
    pub fn load(dir: impl AsRef<Path>) -> crate::Result<FloatMoeModel> {
        FloatMoeModel::load_layer(dir, None)
    }

    /// Loads the MoE block of `layer` (or the first one) of a model directory.
    pub fn load_layer(dir: impl AsRef<Path>, layer: Option<usize>) -> crate::Result<FloatMoeModel> {
        Ok(Self::load_dir(dir.as_ref(), layer)?)
    }

    fn load_dir(dir: &Path, layer: Option<usize>) -> Result<FloatMoeModel> {
        let cfg_path = dir.join("config.json");
        let config = std::fs::read(&cfg_path).map_err(|source| CheckpointError::Io {
            path: cfg_path,
            source,
        })?;
        let store = TensorStore::from_dir(dir)?;
        load_from_store(&config, store, layer)
    }

    /// Loads from in-memory files (the same code path as directories): config.json's bytes
    /// and `(file name, bytes)` of each safetensors file. `origin` names the model in errors.
    pub fn from_bytes(
        origin: &str,
        config_json: &[u8],
        safetensors: &[(&str, &[u8])],
        layer: Option<usize>,
    ) -> crate::Result<FloatMoeModel> {
        let store = TensorStore::from_bytes(origin, safetensors)?;
        Ok(load_from_store(config_json, store, layer)?)
    }

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
        let sel = top_k_f32(&logits, self.config.top_k.0);
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
        let w = &self.experts[e];
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

    /// The block output `y = sum_slots gate * FFN(x)` on raw features.
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
        top_k_f32(&out, 1).first().copied().unwrap_or(0)
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

    /// Writes the model as a Mixtral-format checkpoint (layer 0): `config.json` (with the
    /// `"veilmoe"` object) and `model.safetensors` (f32). Only gated-SiLU models with
    /// softmax-over-selected gating and no expert or router biases fit that format.
    pub fn save_mixtral(&self, dir: impl AsRef<Path>) -> crate::Result<()> {
        Ok(self.save_mixtral_dir(dir.as_ref())?)
    }

    fn save_mixtral_dir(&self, dir: &Path) -> Result<()> {
        let origin = dir.display().to_string();
        let unsupported = |reason: &str| CheckpointError::Unsupported {
            origin: origin.clone(),
            reason: reason.to_string(),
        };
        self.validate().map_err(|r| unsupported(&r))?;
        if self.config.ffn != FfnKind::GatedSilu || self.config.gating != Gating::SoftmaxSelected {
            return Err(unsupported(
                "Mixtral needs gated SiLU experts and softmax-over-selected gates",
            ));
        }
        if self.router_bias.is_some()
            || self
                .experts
                .iter()
                .any(|x| x.b1.is_some() || x.b2.is_some() || x.b3.is_some())
        {
            return Err(unsupported("Mixtral has no router or expert biases"));
        }
        let c = &self.config;
        let config = serde_json::json!({
            "architectures": ["MixtralForSequenceClassification"],
            "model_type": "mixtral",
            "hidden_size": c.d.0,
            "intermediate_size": c.h.0,
            "num_local_experts": c.experts.0,
            "num_experts_per_tok": c.top_k.0,
            "num_hidden_layers": 1,
            "hidden_act": "silu",
            "num_labels": self.classes().unwrap_or(0),
            "torch_dtype": "float32",
            "veilmoe": {
                "residual": self.residual,
                "input_scale": self.input_scale,
                "quantization": self.quantization,
            },
        });
        let mat = |a: &Array2<f32>| (vec![a.nrows(), a.ncols()], a.iter().copied().collect());
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let p = "model.layers.0.block_sparse_moe";
        let (s, v) = mat(&self.router);
        tensors.push((format!("{p}.gate.weight"), s, v));
        for (i, x) in self.experts.iter().enumerate() {
            for (name, w) in [
                ("w1", Some(&x.w1)),
                ("w3", x.w3.as_ref()),
                ("w2", Some(&x.w2)),
            ] {
                if let Some(w) = w {
                    let (s, v) = mat(w);
                    tensors.push((format!("{p}.experts.{i}.{name}.weight"), s, v));
                }
            }
        }
        if let Some(h) = &self.head {
            let (s, v) = mat(&h.weight);
            tensors.push(("score.weight".into(), s, v));
            if let Some(b) = &h.bias {
                tensors.push(("score.bias".into(), vec![b.len()], b.to_vec()));
            }
        }
        let bytes = safetensors_bytes(&tensors, StoredDtype::F32)?;
        let io = |path: PathBuf| move |source| CheckpointError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let text =
            serde_json::to_string_pretty(&config).map_err(|e| unsupported(&e.to_string()))?;
        std::fs::write(dir.join("config.json"), text + "\n")
            .map_err(io(dir.join("config.json")))?;
        std::fs::write(dir.join("model.safetensors"), bytes)
            .map_err(io(dir.join("model.safetensors")))?;
        Ok(())
    }
}

/// The demo model's files, embedded so that binaries need no files (see `models/digits-moe`).
const DEMO_CONFIG: &[u8] = include_bytes!("../../../models/digits-moe/config.json");
const DEMO_WEIGHTS: &[u8] = include_bytes!("../../../models/digits-moe/model.safetensors");

/// The embedded demo model: a Mixtral-format MoE classifier of the UCI handwritten digits
/// (d = 64 pixels, E = 4 experts, top-1, h = 16, residual, 10-class head), trained by
/// `train_digits` (tools) and loaded through the same code path as a model directory.
pub fn embedded_demo_model() -> crate::Result<FloatMoeModel> {
    FloatMoeModel::from_bytes(
        "embedded:digits-moe",
        DEMO_CONFIG,
        &[("model.safetensors", DEMO_WEIGHTS)],
        None,
    )
}
