//! The format crate's one error type.

use thiserror::Error;

/// What can go wrong reading or writing an envelope. Messages are one line.
#[derive(Debug, Error)]
pub enum FormatError {
    /// Wrong magic, truncated, corrupted, too large, wrong kind, undecodable payload.
    #[error("bad {what}: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// The object was made for another preset.
    #[error("preset mismatch: {what} was made for preset `{found}` but `{expected}` is in use")]
    PresetMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// The object belongs to another key set.
    #[error("key-set mismatch: {what} belongs to key set {found}, but the key in use is key set {expected}")]
    KeySetMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// I/O while reading or writing a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the format crate.
pub type Result<T> = std::result::Result<T, FormatError>;

impl FormatError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> FormatError {
        FormatError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}
