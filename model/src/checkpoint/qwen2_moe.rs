//! Qwen2-MoE (`model_type: "qwen2_moe"`) and OLMoE (`"olmoe"`): gated SiLU experts, softmax
//! over all experts then top-k.
//!
//! Tensors of MoE layer `L` (names as the checkpoint spells them):
//! - `model.layers.{L}.mlp.gate.weight` `[E, d]` (the router, no bias);
//! - `model.layers.{L}.mlp.experts.{i}.gate_proj.weight` `[h, d]` (veilmoe's `w1`),
//!   `...up_proj.weight` `[h, d]` (`w3`), `...down_proj.weight` `[d, h]` (`w2`).
//!
//! `h` is `moe_intermediate_size` (Qwen2-MoE), falling back to `intermediate_size` (OLMoE).
//! With `norm_topk_prob: true` the selected probabilities are renormalized, which is exactly a
//! softmax over the selected logits ([`Gating::SoftmaxSelected`]); otherwise the gates are the
//! un-renormalized probabilities ([`Gating::SoftmaxThenTopK`]).
//!
//! Qwen2-MoE's shared expert (`mlp.shared_expert.*`, `mlp.shared_expert_gate.weight`) is a
//! dense FFN that every token uses; it carries no routing secret and is **not evaluated** yet:
//! the loaded model names it in `FloatMoeModel::not_evaluated`, and commands print it as a
//! warning.

use super::block::{family_config, gated_silu_block, Block, GatedNames};
use super::error::{CheckpointError, Result};
use super::store::TensorStore;
use crate::arch::Gating;
use serde::Deserialize;

/// The config.json keys the Qwen2-MoE / OLMoE block needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

fn silu() -> String {
    "silu".into()
}

const REQUIRED: &[&str] = &["hidden_size", "num_experts", "num_experts_per_tok"];

const NAMES: GatedNames = GatedNames {
    prefix: "model.layers.",
    block: ".mlp",
    router: "gate.weight",
    w1: "gate_proj.weight",
    w3: "up_proj.weight",
    w2: "down_proj.weight",
};

pub(crate) fn load(
    value: &serde_json::Value,
    model_type: &str,
    store: &mut TensorStore<'_>,
    layer: Option<usize>,
) -> Result<Block> {
    let origin = store.origin().to_string();
    let cfg: Config = family_config(value, &origin, model_type, REQUIRED)?;
    let h = cfg
        .moe_intermediate_size
        .or(cfg.intermediate_size)
        .ok_or_else(|| CheckpointError::MissingKey {
            origin: origin.clone(),
            model_type: model_type.to_string(),
            key: "moe_intermediate_size".into(),
        })?;
    let gating = if cfg.norm_topk_prob {
        Gating::SoftmaxSelected
    } else {
        Gating::SoftmaxThenTopK
    };
    gated_silu_block(
        store,
        model_type,
        &cfg.hidden_act,
        &NAMES,
        layer,
        (cfg.hidden_size, h, cfg.num_experts, cfg.num_experts_per_tok),
        gating,
    )
}
