//! The engine's side of the file envelope ([`veilmoe_format`]): envelopes bound to a [`Preset`]
//! and a key set.
//!
//! Everything generic (header layout, bounded reads, atomic and secret writes) lives in the
//! `veilmoe-format` crate, which has no crypto dependency so that the model crate can share it;
//! this module adds what needs a preset: encoding an object for a preset and key set, and
//! decoding one only after its kind, preset and key set have been checked.

use crate::error::Result;
use crate::preset::Preset;
use serde::{de::DeserializeOwned, Serialize};
pub use veilmoe_format::{
    decode_payload, read_envelope, read_header, write_atomic, write_secret, Binding, FormatError,
    Header, KeySetId, ObjectKind, PresetFingerprint, FORMAT_VERSION, MAGIC,
};

/// The binding of objects made for `preset` and `key_set`.
pub fn binding(preset: &Preset, key_set: KeySetId) -> Binding {
    Binding {
        preset: preset.fingerprint(),
        preset_name: preset.name.clone(),
        key_set,
    }
}

/// Serializes `value` into an envelope bound to `preset` and `key_set`.
pub fn encode<T: Serialize + ?Sized>(
    kind: ObjectKind,
    preset: &Preset,
    key_set: KeySetId,
    value: &T,
) -> Result<Vec<u8>> {
    Ok(veilmoe_format::encode(
        kind,
        &binding(preset, key_set),
        value,
    )?)
}

/// Serializes `value` into an envelope with the same binding as `like` (for tools that rewrite
/// files, such as merging shards, without loading the preset).
pub fn encode_like<T: Serialize + ?Sized>(
    like: &Header,
    kind: ObjectKind,
    value: &T,
) -> Result<Vec<u8>> {
    Ok(veilmoe_format::encode(kind, &like.binding(), value)?)
}

/// Decodes an envelope: checks magic, version, length and checksum, then the kind, preset and
/// (when given) key set, and only then deserializes the payload.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    kind: ObjectKind,
    preset: &Preset,
    key_set: Option<KeySetId>,
) -> Result<(Header, T)> {
    let (header, payload) = read_header(bytes)?;
    header.expect(kind, preset.fingerprint(), &preset.name, key_set)?;
    let value = decode_payload(kind, payload)?;
    Ok((header, value))
}

/// Reads a whole file of at most `max_bytes` bytes.
pub fn read_file(path: &std::path::Path, max_bytes: u64) -> Result<Vec<u8>> {
    Ok(veilmoe_format::read_file(path, max_bytes)?)
}
