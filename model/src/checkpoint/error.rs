//! [`CheckpointError`]: why a checkpoint cannot be loaded or written.

use std::path::PathBuf;
use thiserror::Error;

/// Why a checkpoint cannot be loaded. Every variant names the file, key or tensor at fault.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid config.json: {reason}")]
    Config { origin: String, reason: String },
    #[error("{origin}: config.json lacks `{key}`, which model_type `{model_type}` needs")]
    MissingKey {
        origin: String,
        model_type: String,
        key: String,
    },
    #[error("{origin}: unknown model_type `{model_type}` (supported: mixtral, qwen2_moe, olmoe, switch_transformers)")]
    UnknownModelType { origin: String, model_type: String },
    #[error("{origin}: unsupported model: {reason}")]
    Unsupported { origin: String, reason: String },
    #[error("{dir}: no *.safetensors file")]
    NoWeights { dir: String },
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors { file: String, reason: String },
    #[error("tensor `{name}` is missing from {dir}")]
    MissingTensor { name: String, dir: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; f32, f16, bf16 or f64 are supported")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` has a value that is not finite (element {index})")]
    NonFinite { name: String, index: usize },
    #[error("tensor `{name}` is defined in both {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    #[error("{dir}: no MoE layer found (no tensor named like `{pattern}`)")]
    NoMoeLayer { dir: String, pattern: String },
    #[error("{dir}: layer {layer} has no MoE block (MoE layers: {available:?})")]
    MissingLayer {
        dir: String,
        layer: usize,
        available: Vec<usize>,
    },
}

/// Result of checkpoint loading.
pub type Result<T> = std::result::Result<T, CheckpointError>;
