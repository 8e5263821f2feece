//! What the family files share: the [`Block`] they hand back, config.json and layer helpers,
//! and the loader of the gated-SiLU block that Mixtral, Qwen2-MoE and OLMoE have in common.

use super::error::{CheckpointError, Result};
use super::float::{FloatExpert, FloatSharedExpert};
use super::store::TensorStore;
use crate::arch::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
use crate::quant::Activation;
use ndarray::{Array1, Array2};
use serde::de::DeserializeOwned;

/// What a family file hands back: the block of one layer.
pub(crate) struct Block {
    /// Prefix of the block's tensor names (`model.layers.3.mlp.`): tensors under it that the
    /// loader did not read are named as not evaluated.
    pub prefix: String,
    pub config: MoeConfig,
    pub layer: usize,
    pub router: Array2<f32>,
    pub router_bias: Option<Array1<f32>>,
    pub experts: Vec<FloatExpert>,
    /// Qwen2-MoE's shared expert, when the checkpoint has one.
    pub shared: Option<FloatSharedExpert>,
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
        prefix: format!("{p}."),
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
        shared: None,
    })
}

/// Checks the limits of what one block can be (positive sizes, 1 <= k <= E).
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
