//! Typed errors of the protocols crate.

use thiserror::Error;
use veilmoe_engine::EngineError;
use veilmoe_model::ModelError;

#[derive(Debug, Error)]
pub enum ProtocolError {
    /// An engine operation refused its inputs (shape, range, noise budget, key set...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model (weights, configuration, files) is not usable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A model or layer configuration that this protocol cannot evaluate.
    #[error("invalid MoE configuration: {0}")]
    Config(String),
    /// A strategy that needs something the routing step did not produce, or that a job may not
    /// use.
    #[error("strategy `{strategy}`: {reason}")]
    Strategy {
        strategy: &'static str,
        reason: String,
    },
    /// A message from the other party that does not fit this session (another model, batch or
    /// strategy; a record outside the structure the model and batch determine).
    #[error("{0}")]
    Session(String),
}

pub type Result<T> = std::result::Result<T, ProtocolError>;

pub(crate) fn config(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Config(msg.into())
}

pub(crate) fn session(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Session(msg.into())
}
