//! veilmoe-format: the on-disk envelope every veilmoe object travels in (keys, ciphertext
//! batches, results, quantized models), with no cryptographic dependency beyond a checksum, so
//! that the crypto-free model crate can write its model file in the same format as the engine
//! writes keys.
//!
//! - [`envelope`]: the header (magic, version, kind, preset fingerprint, key-set id, preset
//!   name, payload length and checksum), encoding and decoding, streamed reads bounded by a
//!   limit the caller derives from what it expects;
//! - [`file`]: whole-file reads bounded the same way, atomic writes, and secret-file writes
//!   (mode 0600, exclusive creation, no symlink following).

pub mod envelope;
pub mod error;
pub mod file;

pub use envelope::{
    decode_payload, encode, read_envelope, read_header, Binding, Header, KeySetId, ObjectKind,
    PresetFingerprint, FORMAT_VERSION, MAGIC,
};
pub use error::{FormatError, Result};
pub use file::{read_file, write_atomic, write_secret};
