//! veilmoe-engine: the crypto core of veilmoe, on tfhe's `core_crypto` layer.
//!
//! - [`preset`]: validated parameter presets (`params/*.toml`, embedded);
//! - [`keys`]: client and server keys, their files (full and seeded);
//! - [`encoding`], [`ciphertext`], [`client`]: how integers sit on the torus, LWE vectors and
//!   GLWE-packed vectors, encryption and decryption;
//! - [`Evaluator`]: every server operation, counted in an [`accounting::OpLog`]:
//!   [`linear`] (leveled plaintext-weight products), [`pbs`] with [`lut`] (programmable
//!   bootstrapping), [`cbs`] (circuit bootstrapping), [`select`] (CMUX), [`packing`];
//! - [`noise`]: variance bookkeeping and failure probabilities;
//! - [`security`]: presets' estimated security from Concrete's lattice-estimator-fitted curves;
//! - [`format`]: the versioned file envelope.

pub mod accounting;
pub mod cbs;
pub mod ciphertext;
pub mod client;
pub mod compare;
pub mod encoding;
pub mod error;
pub mod evaluator;
pub mod format;
pub mod keys;
mod keyswitch;
pub mod linear;
pub mod lut;
pub mod noise;
pub mod packing;
pub mod pbs;
pub mod preset;
pub mod random;
pub mod security;
pub mod select;

pub use accounting::{NoisyReads, OpEvent, OpKind, OpLog};
pub use ciphertext::{LweKeyKind, LweVector, PackedGlwe, SeededPackedGlwe};
pub use encoding::{Encoding, FixedPoint, ValueRange};
pub use error::{EngineError, Result};
pub use evaluator::Evaluator;
pub use format::{KeySetId, ObjectKind};
pub use keys::{ClientKey, CompressedServerKey, ServerKey};
pub use linear::{Cols, PackedRows, PackedWeights, Rows, WeightMatrix};
pub use lut::{BivariateLut, Lut};
pub use preset::{Preset, PresetFingerprint};
pub use security::SecurityEstimate;
pub use select::GgswBit;
