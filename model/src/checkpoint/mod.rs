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
//!
//! The code, by job: `error` ([`CheckpointError`]), `float` ([`FloatMoeModel`] and its
//! forward pass), `load` (config.json and the loaders), `block` (what the family files share),
//! `store` (the safetensors files), `save` (the Mixtral writer,
//! [`FloatMoeModel::save_mixtral`]), `demo` (the embedded demo model).

mod block;
mod demo;
mod error;
mod float;
mod load;
pub mod mixtral;
pub mod qwen2_moe;
mod save;
mod store;
pub(crate) use store::TensorStore;
pub mod switch;

pub use demo::embedded_demo_model;
#[cfg(test)]
pub(crate) use demo::{DEMO_CONFIG, DEMO_WEIGHTS};
pub use error::{CheckpointError, Result};
pub use float::{ExpertTrace, FloatExpert, FloatHead, FloatMoeModel, FloatSharedExpert};
pub use load::{Family, VeilmoeExtras};
pub use store::{safetensors_bytes, StoredDtype};
