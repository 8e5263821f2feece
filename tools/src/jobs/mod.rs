//! Offline encrypted batch jobs over the protocol's session API: encrypt a batch (client), run
//! the encrypted model over it with checkpoints, resume and sharding (server), merge shards,
//! decrypt (client), and `veilmoe run`, the whole workflow locally on the demo model.

pub mod decrypt;
pub mod demo;
pub mod encrypt;
pub mod infer;
pub mod merge;
pub mod route;

use crate::files::keys::KeyFileError;
use crate::files::FileError;
use thiserror::Error;
use veilmoe_engine::EngineError;
use veilmoe_protocols::ProtocolError;

#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, JobError>;

pub(crate) fn usage(s: impl Into<String>) -> JobError {
    JobError::Usage(s.into())
}

/// Prefixes a protocol error with the file it concerns.
pub(crate) fn in_file(path: &std::path::Path) -> impl Fn(ProtocolError) -> JobError + '_ {
    move |e| usage(format!("{}: {e}", path.display()))
}

/// Progress of a job: (records done in this shard, shard size, seconds per record so far).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, f64);
