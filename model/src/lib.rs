//! veilmoe-model: everything about a model that needs no cryptography.
//!
//! - [`checkpoint`]: Hugging Face MoE checkpoints (Mixtral, Qwen2-MoE/OLMoE, Switch) as float
//!   models with their forward pass, a Mixtral-format writer, and the embedded demo model;
//! - [`arch`], [`quant`], [`quantized`]: the public architecture, the integer semantics and
//!   quantization parameters, and the quantized MoE layer; [`linear_factor`]: where a gated
//!   FFN's linear factor is read (on its own, or inside its product's quarter squares);
//!   [`output_digits`]: W2 in two digits whose products the client adds (a finer W2 at the
//!   relative output noise of a coarser one);
//! - [`capacity`]: the capacity dispatch rule (slots per destination, overflow) and its slot
//!   numbering;
//! - [`classifier`]: one quantized block with its input quantizer and client-side head, and its
//!   [`ModelId`];
//! - [`pool`]: a pool of classifiers over one input with a cost-aware router, its checks and its
//!   plaintext routing;
//! - [`model_file`]: the quantized-model file (the project's envelope, kind `QuantizedModel`);
//! - [`quantize`]: float model -> quantized classifier, calibrated, and accuracy helpers;
//! - [`fidelity`]: how far a quantized or decrypted block is from its float model;
//! - [`reference`]: the plaintext integer reference of the encrypted layer and its simulation
//!   mode;
//! - [`data`]: records (.csv/.npy), labelled data sets, the embedded digits and their split;
//! - [`train`]: the reproducible training of the embedded demo model;
//! - [`math`], [`random`]: argmax/top-k/median, and a small deterministic generator.
//!
//! `cargo tree -p veilmoe-model` has no tfhe: the encrypted path lives in veilmoe-protocols.

pub mod activation_reads;
pub mod arch;
pub mod capacity;
pub mod checkpoint;
pub mod classifier;
pub mod data;
pub mod error;
pub mod fidelity;
pub mod linear_factor;
pub mod math;
pub mod model_file;
pub mod output_digits;
pub mod pairwise;
pub mod pool;
pub mod pool_accuracy;
pub mod pool_capacity;
pub mod pool_files;
pub mod pool_router;
pub mod quant;
pub mod quantize;
pub mod quantized;
pub mod random;
pub mod reference;
pub mod train;

pub use arch::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
pub use checkpoint::{embedded_demo_model, CheckpointError, Family, FloatMoeModel};
pub use classifier::{Head, InputQuantizer, ModelId, QuantizedClassifier};
pub use data::{digits_split, embedded_digits, load_labelled, read_records, Dataset};
pub use error::{ModelError, Result};
pub use fidelity::{reference_fidelity, Fidelity, StageFidelity, VectorFidelity};
pub use math::{argmax, index_bits, median, top_k};
pub use ndarray;
pub use quant::{Activation, QuantParams};
pub use quantize::{
    evaluate_accuracy, quantize, quantize_with, AccuracyReport, QuantizeOptions, QuantizeReport,
};
pub use quantized::{ExpertWeights, QuantizedMoe, SharedExpert};
pub use random::SplitMix;
pub use reference::{RefOutput, Rounding};
pub use train::{train_digits, TrainOptions, Trained};
