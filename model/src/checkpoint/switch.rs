//! Switch Transformers (`model_type: "switch_transformers"`): top-1 routing, gate = the
//! selected expert's softmax probability (not renormalized), experts `wo act(wi x)`.
//!
//! Tensors of encoder MoE layer `L` (names as the checkpoint spells them):
//! - `encoder.block.{L}.layer.1.mlp.router.classifier.weight` `[E, d]` (the router; a
//!   `...classifier.bias` `[E]` is used when present);
//! - `encoder.block.{L}.layer.1.mlp.experts.expert_{i}.wi.weight` `[h, d]`,
//!   `...wo.weight` `[d, h]`.
//!
//! Config keys: `num_experts`, `d_model`, `d_ff`, `dense_act_fn` (default `relu`). Only the
//! encoder's sparse blocks are considered; Switch's expert capacity (token dropping) does not
//! apply to a single token and is ignored.

use super::block::{activation, check_sizes, family_config, pick_layer, Block};
use super::error::Result;
use super::float::FloatExpert;
use super::store::TensorStore;
use crate::arch::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
use serde::Deserialize;

/// The config.json keys the Switch block needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub num_experts: usize,
    pub d_model: usize,
    pub d_ff: usize,
    #[serde(default = "relu")]
    pub dense_act_fn: String,
}

fn relu() -> String {
    "relu".into()
}

const REQUIRED: &[&str] = &["num_experts", "d_model", "d_ff"];

const PREFIX: &str = "encoder.block.";
const ROUTER: &str = ".layer.1.mlp.router.classifier.weight";

pub(crate) fn load(
    value: &serde_json::Value,
    store: &mut TensorStore<'_>,
    layer: Option<usize>,
) -> Result<Block> {
    let origin = store.origin().to_string();
    let cfg: Config = family_config(value, &origin, "switch_transformers", REQUIRED)?;
    let (d, h, e) = (cfg.d_model, cfg.d_ff, cfg.num_experts);
    check_sizes(&origin, d, h, e, 1)?;
    let act = activation(&origin, &cfg.dense_act_fn)?;
    let layers = store.layers_with(PREFIX, ROUTER);
    let l = pick_layer(&origin, &layers, layer, &format!("{PREFIX}{{L}}{ROUTER}"))?;
    let p = format!("{PREFIX}{l}.layer.1.mlp");
    let router = store.matrix(&format!("{p}.router.classifier.weight"), e, d)?;
    let router_bias = store.optional_vector(&format!("{p}.router.classifier.bias"), e)?;
    let mut experts = Vec::with_capacity(e);
    for i in 0..e {
        let x = format!("{p}.experts.expert_{i}");
        experts.push(FloatExpert {
            w1: store.matrix(&format!("{x}.wi.weight"), h, d)?,
            b1: None,
            w3: None,
            b3: None,
            w2: store.matrix(&format!("{x}.wo.weight"), d, h)?,
            b2: None,
        });
    }
    Ok(Block {
        prefix: format!("{p}."),
        config: MoeConfig {
            d: ModelDim(d),
            h: HiddenDim(h),
            experts: ExpertCount(e),
            top_k: TopK(1),
            ffn: FfnKind::Plain(act),
            gating: Gating::SoftmaxThenTopK,
        },
        layer: l,
        router,
        router_bias,
        experts,
        shared: None,
    })
}
