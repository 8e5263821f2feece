//! Mixtral (`model_type: "mixtral"`): gated SiLU experts, softmax over the top-k logits.
//!
//! Tensors of MoE layer `L` (names as the checkpoint spells them):
//! - `model.layers.{L}.block_sparse_moe.gate.weight` `[E, d]` (the router, no bias);
//! - `model.layers.{L}.block_sparse_moe.experts.{i}.w1.weight` `[h, d]`,
//!   `...w3.weight` `[h, d]`, `...w2.weight` `[d, h]`:
//!   `FFN(x) = w2 (silu(w1 x) * (w3 x))`.

use super::block::{family_config, gated_silu_block, Block, GatedNames};
use super::error::Result;
use super::store::TensorStore;
use crate::arch::Gating;
use serde::Deserialize;

/// The config.json keys Mixtral's MoE block needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

fn silu() -> String {
    "silu".into()
}

const REQUIRED: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_local_experts",
    "num_experts_per_tok",
];

const NAMES: GatedNames = GatedNames {
    prefix: "model.layers.",
    block: ".block_sparse_moe",
    router: "gate.weight",
    w1: "w1.weight",
    w3: "w3.weight",
    w2: "w2.weight",
};

pub(crate) fn load(
    value: &serde_json::Value,
    store: &mut TensorStore<'_>,
    layer: Option<usize>,
) -> Result<Block> {
    let origin = store.origin().to_string();
    let cfg: Config = family_config(value, &origin, "mixtral", REQUIRED)?;
    let dims = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_local_experts,
        cfg.num_experts_per_tok,
    );
    gated_silu_block(
        store,
        "Mixtral",
        &cfg.hidden_act,
        &NAMES,
        layer,
        dims,
        Gating::SoftmaxSelected,
    )
}
