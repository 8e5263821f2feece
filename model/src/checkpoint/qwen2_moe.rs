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
//! Qwen2-MoE's shared expert is a dense gated FFN that every token uses, scaled by its own
//! sigmoid gate: `mlp.shared_expert.{gate,up,down}_proj.weight` (`[hs, d]`, `[hs, d]`,
//! `[d, hs]`, `hs = shared_expert_intermediate_size`) and `mlp.shared_expert_gate.weight`
//! (`[1, d]`). It is loaded into [`crate::checkpoint::FloatSharedExpert`] and evaluated (under
//! encryption too); a checkpoint holding only part of it is refused with the missing tensor's
//! name.

use super::block::{family_config, gated_silu_block, Block, GatedNames};
use super::error::{CheckpointError, Result};
use super::float::{FloatExpert, FloatSharedExpert};
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
    /// Hidden units of the shared expert (Qwen2-MoE only).
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
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
    let mut block = gated_silu_block(
        store,
        model_type,
        &cfg.hidden_act,
        &NAMES,
        layer,
        (cfg.hidden_size, h, cfg.num_experts, cfg.num_experts_per_tok),
        gating,
    )?;
    block.shared = shared_expert(store, &block.prefix, cfg.hidden_size, &cfg)?;
    Ok(block)
}

/// The block's shared expert, if its checkpoint has any tensor of one (then it must have all).
fn shared_expert(
    store: &mut TensorStore<'_>,
    prefix: &str,
    d: usize,
    cfg: &Config,
) -> Result<Option<FloatSharedExpert>> {
    let p = format!("{prefix}shared_expert");
    if !store.names().any(|n| n.starts_with(&p)) {
        return Ok(None);
    }
    let w1_name = format!("{p}.gate_proj.weight");
    // The config's size when it declares one, else the tensor's (checked against it below).
    let hs = match (cfg.shared_expert_intermediate_size, store.shape(&w1_name)) {
        (Some(hs), _) => hs,
        (None, Some([hs, _])) => *hs,
        (None, _) => {
            return Err(CheckpointError::MissingTensor {
                name: w1_name,
                dir: store.origin().to_string(),
            })
        }
    };
    if hs == 0 {
        return Err(CheckpointError::Config {
            origin: store.origin().to_string(),
            reason: "shared_expert_intermediate_size must be positive".into(),
        });
    }
    let ffn = FloatExpert {
        w1: store.matrix(&w1_name, hs, d)?,
        b1: None,
        w3: Some(store.matrix(&format!("{p}.up_proj.weight"), hs, d)?),
        b3: None,
        w2: store.matrix(&format!("{p}.down_proj.weight"), d, hs)?,
        b2: None,
    };
    let gate = store.matrix(&format!("{p}_gate.weight"), 1, d)?;
    Ok(Some(FloatSharedExpert {
        ffn,
        gate: gate.row(0).to_owned(),
    }))
}
