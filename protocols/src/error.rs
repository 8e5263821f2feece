//! Typed errors of the protocols crate.

use thiserror::Error;
use veilmoe_engine::EngineError;

#[derive(Debug, Error)]
pub enum ProtocolError {
    /// An engine operation refused its inputs (shape, range, noise budget, key set...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A model or layer configuration that cannot be evaluated.
    #[error("invalid MoE configuration: {0}")]
    Config(String),
    /// Model weights that do not match their configuration.
    #[error("model weights do not match the configuration: {0}")]
    Weights(String),
    /// A model checkpoint that cannot be loaded (files, config.json, tensors).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A data set file that cannot be read.
    #[error("data set {origin}: {reason}")]
    Dataset { origin: String, reason: String },
    /// A strategy that needs something the routing step did not produce.
    #[error("strategy `{strategy}`: {reason}")]
    Strategy {
        strategy: &'static str,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, ProtocolError>;

pub(crate) fn config(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Config(msg.into())
}
