//! veilmoe-protocols: private Mixture-of-Experts inference over the engine.
//!
//! - [`model`]: a quantized MoE layer (architecture, integer weights, public quantization);
//! - [`quant`]: the integer semantics shared by the encrypted path and the reference;
//! - [`reference`]: plaintext reference executor and simulation mode;
//! - [`router`]: encrypted router logits, tournament argmax, top-k, gates;
//! - [`ffn`]: encrypted expert FFNs;
//! - [`strategy`]: oblivious expert evaluation (select, compute-all) and the INSECURE
//!   public-routing reference;
//! - [`layer`]: the MoE layer end to end.

pub mod error;
pub mod ffn;
pub mod layer;
pub mod model;
pub mod quant;
pub mod reference;
pub mod router;
pub mod strategy;

pub use error::{ProtocolError, Result};
pub use layer::{MoeLayer, MoeOutput};
pub use model::{
    ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantParams, QuantizedMoe, TopK,
};
pub use quant::Activation;
pub use reference::{RefOutput, Rounding};
pub use router::{Gates, Routing, SlotRouting};
pub use strategy::{ComputeAll, ExpertStrategy, PublicRouting, Select};
pub use veilmoe_engine as engine;
