//! Public architecture of an MoE layer: dimensions (as newtypes), FFN kind, gating.

use crate::quant::Activation;
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

impl MoeConfig {
    /// Whether the layer subtracts two slot outputs (the Mixtral top-2 gate combination
    /// `G o2 + g1 (o1 - o2)`): the slot outputs' encoding then needs one more bit, which the
    /// encrypted layer and the quantizer's noise limit both account for.
    pub fn subtracts_slot_outputs(&self) -> bool {
        self.top_k.0 == 2 && self.gating == Gating::SoftmaxSelected
    }
}
