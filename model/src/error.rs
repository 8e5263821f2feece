//! Typed errors of the model crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    /// A model or layer configuration that cannot be evaluated.
    #[error("invalid MoE configuration: {0}")]
    Config(String),
    /// A model pool, its router, its capacities or its directory that cannot be used.
    #[error("invalid model pool: {0}")]
    Pool(String),
    /// Model weights that do not match their configuration.
    #[error("model weights do not match the configuration: {0}")]
    Weights(String),
    /// A model checkpoint that cannot be loaded (files, config.json, tensors).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A data file that cannot be read (records, labelled data sets).
    #[error("{origin}: {reason}")]
    Data { origin: String, reason: String },
    /// A quantized-model file that cannot be read or written.
    #[error("{path}: {source}")]
    ModelFile {
        path: String,
        #[source]
        source: veilmoe_format::FormatError,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn config(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

pub(crate) fn pool_error(msg: impl Into<String>) -> ModelError {
    ModelError::Pool(msg.into())
}
