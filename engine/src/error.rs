//! The engine's one error type. Every fallible public function returns [`Result`]; nothing in the
//! engine panics on user-supplied data (files, shapes, presets, keys).

use thiserror::Error;

/// Errors of the veilmoe engine. Messages are one line and name the offending thing.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A preset file could not be parsed or failed validation.
    #[error("invalid preset `{name}`: {reason}")]
    InvalidPreset { name: String, reason: String },

    /// A preset name that is neither embedded nor a readable file.
    #[error("unknown preset `{0}` (embedded presets: default, fine, precise, test; or give a path to a .toml file)")]
    UnknownPreset(String),

    /// An insecure (test-only) preset was used without an explicit opt-in.
    #[error("preset `{0}` is INSECURE (test only); refusing to use it without an explicit opt-in (--allow-insecure)")]
    InsecurePreset(String),

    /// Two objects were made for different presets.
    #[error("preset mismatch: {what} was made for preset `{found}` but `{expected}` is in use")]
    PresetMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// Two objects belong to different key sets.
    #[error("key-set mismatch: {what} belongs to key set {found}, but the key in use is key set {expected}")]
    KeySetMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// Dimensions or shapes that do not fit together.
    #[error("shape mismatch in {context}: expected {expected}, got {found}")]
    ShapeMismatch {
        context: &'static str,
        expected: String,
        found: String,
    },

    /// A value outside what an encoding or operation can represent.
    #[error("value out of range in {context}: {detail}")]
    OutOfRange {
        context: &'static str,
        detail: String,
    },

    /// The accumulated noise would exceed the preset's failure-probability budget.
    #[error("noise budget exceeded in {context}: variance {variance:.3e} > budget {budget:.3e} (reduce the weights' 2-norm or use a larger preset)")]
    NoiseBudget {
        context: &'static str,
        variance: f64,
        budget: f64,
    },

    /// A serialized object is malformed: wrong magic, truncated, corrupted, wrong kind.
    #[error("bad {what}: {reason}")]
    Format { what: &'static str, reason: String },

    /// An operation needs a key the server key does not carry.
    #[error("missing key material: {0}")]
    MissingKey(&'static str),

    /// I/O while reading or writing a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<veilmoe_format::FormatError> for EngineError {
    fn from(e: veilmoe_format::FormatError) -> Self {
        use veilmoe_format::FormatError as F;
        match e {
            F::Malformed { what, reason } => EngineError::Format { what, reason },
            F::PresetMismatch {
                what,
                expected,
                found,
            } => EngineError::PresetMismatch {
                what,
                expected,
                found,
            },
            F::KeySetMismatch {
                what,
                expected,
                found,
            } => EngineError::KeySetMismatch {
                what,
                expected,
                found,
            },
            F::Io { path, source } => EngineError::Io { path, source },
        }
    }
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub(crate) fn shape(
        context: &'static str,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        EngineError::ShapeMismatch {
            context,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
    pub(crate) fn range(context: &'static str, detail: impl ToString) -> Self {
        EngineError::OutOfRange {
            context,
            detail: detail.to_string(),
        }
    }
}
