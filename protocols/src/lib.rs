//! veilmoe-protocols: private Mixture-of-Experts inference over the engine.
//!
//! - [`model`]: a quantized MoE layer (architecture, integer weights, public quantization);
//! - [`quant`]: the integer semantics shared by the encrypted path and the reference;
//! - [`reference`]: plaintext reference executor and simulation mode;
//! - [`router`]: encrypted router logits, tournament argmax, top-k, gates;
//! - [`ffn`]: encrypted expert FFNs;
//! - [`strategy`]: oblivious expert evaluation (select, compute-all) and the INSECURE
//!   public-routing reference;
//! - [`layer`]: the MoE layer end to end;
//! - [`classifier`]: one MoE block with its input quantizer and the client-side head, the unit
//!   batch jobs evaluate;
//! - [`checkpoint`]: Hugging Face MoE checkpoints (Mixtral, Qwen2-MoE/OLMoE, Switch) as float
//!   models, and the embedded demo model;
//! - [`quantize`]: float model -> [`QuantizedClassifier`], calibrated, and accuracy helpers;
//! - [`digits`]: the UCI handwritten digits data set (embedded) and its fixed split.

pub mod checkpoint;
pub mod classifier;
pub mod digits;
pub mod error;
pub mod ffn;
pub mod layer;
pub mod model;
pub mod quant;
pub mod quantize;
pub mod reference;
pub mod router;
pub mod strategy;

pub use checkpoint::{embedded_demo_model, CheckpointError, Family, FloatMoeModel};
pub use classifier::{predicted_class, Head, InputQuantizer, QuantizedClassifier};
pub use digits::{digits_split, embedded_digits, load_digits, Dataset};
pub use error::{ProtocolError, Result};
pub use layer::{MoeLayer, MoeOutput};
pub use model::{
    ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantParams, QuantizedMoe, TopK,
};
pub use ndarray;
pub use quant::Activation;
pub use quantize::{
    evaluate_accuracy, quantize, quantize_with, AccuracyReport, QuantizeOptions, QuantizeReport,
};
pub use reference::{RefOutput, Rounding};
pub use router::{Gates, Routing, SlotRouting};
pub use strategy::{ComputeAll, ExpertStrategy, PublicRouting, Select};
pub use veilmoe_engine as engine;
