//! The envelope of every veilmoe object.
//!
//! ```text
//! magic "VEILMOE\0" | format version u16 | kind u16 | preset fingerprint [16] | key-set id [16]
//! | preset name (u16 length + UTF-8) | payload length u64 | payload SHA-256 (first 16 bytes) | payload
//! ```
//!
//! All integers are little-endian; the payload is bincode 1.3. The header lets a reader say *what*
//! a file is without decoding it (`veilmoe inspect`) and refuse a key, a batch and a preset that do
//! not belong together before any work starts. The length and checksum catch truncation and
//! corruption with a clear error instead of a bincode panic or garbage.
//!
//! Objects that belong to no preset or key set (a quantized model) carry an all-zero fingerprint,
//! an all-zero key set and an empty preset name ([`Binding::UNBOUND`]).
//!
//! Reads are bounded: [`read_envelope`] takes the largest payload the caller expects and never
//! allocates more than what the stream has actually delivered, so a small file that claims a
//! huge payload costs nothing.

use crate::error::{FormatError, Result};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;

/// File magic.
pub const MAGIC: [u8; 8] = *b"VEILMOE\0";
/// Current envelope format version. Version 2: a quantized model holds its shared expert
/// (Qwen2-MoE), so version-1 model files no longer decode; they are refused by version, with a
/// cause, rather than misread. Version 3: a quantized model records whether its first-stage
/// shift was calibrated (the input width then follows from it, not from the worst case).
/// Version 4: a quantized model records where a gated FFN's linear factor is read (on its own,
/// or inside its product's quarter squares). Version 5: a quantized model records whether it
/// routes by pairwise comparisons of the router accumulators. Version 6: its quantization
/// parameters record the input's own width (inputs may be wider than a read). Version 7: they
/// record how many offset reads each pre-activation gets.
pub const FORMAT_VERSION: u16 = 7;

/// A hash of a preset's cryptographic parameters (not of its name or description).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PresetFingerprint(pub [u8; 16]);

impl fmt::Display for PresetFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Identifies the key set a key or ciphertext belongs to: random, drawn at key generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeySetId(pub [u8; 16]);

impl fmt::Display for KeySetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ObjectKind {
    ClientKey = 1,
    /// The server key in Fourier form (earlier versions' files; no longer read).
    ServerKey = 2,
    /// The server key in seeded form: what a server key file holds.
    CompressedServerKey = 3,
    LweVector = 4,
    PackedGlwe = 5,
    SeededPackedGlwe = 6,
    /// A batch of encrypted records (client upload).
    Batch = 7,
    /// A batch of encrypted results (server output).
    Results = 8,
    /// One encrypted record of a batch (follows a `Batch` header in a batch file).
    BatchRecord = 9,
    /// One encrypted result record (follows a `Results` header in a results file).
    ResultRecord = 10,
    /// A quantized model: integer weights, public quantization, client-side head, model id.
    QuantizedModel = 11,
}

impl ObjectKind {
    const ALL: [ObjectKind; 11] = [
        ObjectKind::ClientKey,
        ObjectKind::ServerKey,
        ObjectKind::CompressedServerKey,
        ObjectKind::LweVector,
        ObjectKind::PackedGlwe,
        ObjectKind::SeededPackedGlwe,
        ObjectKind::Batch,
        ObjectKind::Results,
        ObjectKind::BatchRecord,
        ObjectKind::ResultRecord,
        ObjectKind::QuantizedModel,
    ];

    pub fn from_u16(v: u16) -> Option<ObjectKind> {
        ObjectKind::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// Human name, used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::ClientKey => "client key",
            ObjectKind::ServerKey => "full-form server key",
            ObjectKind::CompressedServerKey => "server key",
            ObjectKind::LweVector => "LWE ciphertext vector",
            ObjectKind::PackedGlwe => "packed GLWE ciphertext",
            ObjectKind::SeededPackedGlwe => "seeded packed GLWE ciphertext",
            ObjectKind::Batch => "encrypted batch",
            ObjectKind::Results => "encrypted results",
            ObjectKind::BatchRecord => "encrypted batch record",
            ObjectKind::ResultRecord => "encrypted result record",
            ObjectKind::QuantizedModel => "quantized model",
        }
    }
}

/// What an envelope is bound to: the preset (fingerprint and name) and key set it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub preset: PresetFingerprint,
    pub preset_name: String,
    pub key_set: KeySetId,
}

impl Binding {
    /// Bound to no preset and no key set (quantized models).
    pub const UNBOUND: Binding = Binding {
        preset: PresetFingerprint([0; 16]),
        preset_name: String::new(),
        key_set: KeySetId([0; 16]),
    };

    pub fn is_unbound(&self) -> bool {
        *self == Binding::UNBOUND
    }
}

/// The decoded header of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub kind: ObjectKind,
    pub preset: PresetFingerprint,
    pub key_set: KeySetId,
    pub preset_name: String,
    pub payload_len: u64,
    checksum: [u8; 16],
}

impl Header {
    /// What the envelope is bound to.
    pub fn binding(&self) -> Binding {
        Binding {
            preset: self.preset,
            preset_name: self.preset_name.clone(),
            key_set: self.key_set,
        }
    }

    /// Refuses an envelope of another kind.
    pub fn expect_kind(&self, kind: ObjectKind) -> Result<()> {
        if self.kind != kind {
            return Err(FormatError::malformed(
                kind.name(),
                format!(
                    "this file holds a {}, not a {}",
                    self.kind.name(),
                    kind.name()
                ),
            ));
        }
        Ok(())
    }

    /// Refuses an envelope of another kind, preset or (when given) key set.
    pub fn expect(
        &self,
        kind: ObjectKind,
        preset: PresetFingerprint,
        preset_name: &str,
        key_set: Option<KeySetId>,
    ) -> Result<()> {
        self.expect_kind(kind)?;
        if self.preset != preset {
            return Err(FormatError::PresetMismatch {
                what: kind.name(),
                expected: preset_name.to_string(),
                found: self.preset_name.clone(),
            });
        }
        if let Some(ks) = key_set {
            if ks != self.key_set {
                return Err(FormatError::KeySetMismatch {
                    what: kind.name(),
                    expected: ks.to_string(),
                    found: self.key_set.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Magic, version, kind, fingerprint, key set, name length.
const FIXED_HEADER: usize = 8 + 2 + 2 + 16 + 16 + 2;
/// Payload length and checksum after the name.
const TAIL: usize = 8 + 16;

/// Serializes `value` into an envelope bound to `binding`.
pub fn encode<T: Serialize + ?Sized>(
    kind: ObjectKind,
    binding: &Binding,
    value: &T,
) -> Result<Vec<u8>> {
    let payload = bincode::serialize(value)
        .map_err(|e| FormatError::malformed(kind.name(), format!("cannot serialize: {e}")))?;
    let name = binding.preset_name.as_bytes();
    let name_len = u16::try_from(name.len())
        .map_err(|_| FormatError::malformed(kind.name(), "preset name longer than 65535 bytes"))?;
    let mut out = Vec::with_capacity(FIXED_HEADER + name.len() + TAIL + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&binding.preset.0);
    out.extend_from_slice(&binding.key_set.0);
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload)[..16]);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Splits an envelope into its header and payload, checking the magic, version and kind code,
/// then the payload's length and checksum.
pub fn read_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let bad = |reason: String| FormatError::malformed("veilmoe file", reason);
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(bad("not a veilmoe file (wrong magic bytes)".into()));
    }
    if bytes.len() < FIXED_HEADER {
        return Err(bad(format!("truncated header ({} bytes)", bytes.len())));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
        )));
    }
    let kind_raw = u16_at(10);
    let kind = ObjectKind::from_u16(kind_raw)
        .ok_or_else(|| bad(format!("unknown object kind {kind_raw}")))?;
    let mut preset = [0u8; 16];
    preset.copy_from_slice(&bytes[12..28]);
    let mut key_set = [0u8; 16];
    key_set.copy_from_slice(&bytes[28..44]);
    let name_len = u16_at(44) as usize;
    let rest = &bytes[FIXED_HEADER..];
    if rest.len() < name_len + TAIL {
        return Err(bad("truncated header".into()));
    }
    let preset_name = String::from_utf8(rest[..name_len].to_vec())
        .map_err(|_| bad("preset name is not UTF-8".into()))?;
    let rest = &rest[name_len..];
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&rest[..8]);
    let payload_len = u64::from_le_bytes(len8);
    let mut checksum = [0u8; 16];
    checksum.copy_from_slice(&rest[8..TAIL]);
    let payload = &rest[TAIL..];
    let header = Header {
        version,
        kind,
        preset: PresetFingerprint(preset),
        key_set: KeySetId(key_set),
        preset_name,
        payload_len,
        checksum,
    };
    check_payload(&header, payload)?;
    Ok((header, payload))
}

/// Verifies the payload's length and checksum against the header.
fn check_payload(header: &Header, payload: &[u8]) -> Result<()> {
    let what = header.kind.name();
    let len = payload.len() as u64;
    if len < header.payload_len {
        return Err(FormatError::malformed(
            what,
            format!(
                "truncated: payload has {len} of {} bytes",
                header.payload_len
            ),
        ));
    }
    if len > header.payload_len {
        return Err(FormatError::malformed(
            what,
            format!(
                "{} trailing bytes after the payload",
                len - header.payload_len
            ),
        ));
    }
    if Sha256::digest(payload)[..16] != header.checksum {
        return Err(FormatError::malformed(
            what,
            "checksum mismatch: the file is corrupted",
        ));
    }
    Ok(())
}

/// Deserializes a checked payload. bincode is told the payload's own length as its limit, so a
/// length field inside the payload cannot make it allocate beyond what the file holds.
pub fn decode_payload<T: DeserializeOwned>(kind: ObjectKind, payload: &[u8]) -> Result<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| FormatError::malformed(kind.name(), format!("payload does not decode: {e}")))
}

/// Reads the next whole envelope from a stream of concatenated envelopes (batch and results
/// files are a header envelope followed by one envelope per record, so a job can stream them
/// and a killed writer leaves at worst one incomplete envelope at the end).
///
/// `max_payload` is the largest payload the caller accepts: what its preset and the expected
/// object allow, never a length taken from the file. Memory grows only with the bytes actually
/// read. Returns `Ok(None)` at a clean end of stream, and an error naming the truncation when the
/// stream ends inside an envelope. The envelope's checksum is checked by [`read_header`].
pub fn read_envelope(reader: &mut impl Read, max_payload: u64) -> Result<Option<Vec<u8>>> {
    let truncated = |got: usize, want: u64| {
        FormatError::malformed(
            "veilmoe file",
            format!("truncated: the last object has {got} of at least {want} bytes"),
        )
    };
    let mut buf = vec![0u8; FIXED_HEADER];
    let got = read_full(reader, &mut buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < FIXED_HEADER {
        return Err(truncated(got, FIXED_HEADER as u64));
    }
    if buf[..8] != MAGIC {
        return Err(FormatError::malformed(
            "veilmoe file",
            "not a veilmoe object (wrong magic bytes)",
        ));
    }
    let name_len = u16::from_le_bytes([buf[44], buf[45]]) as usize;
    let mut rest = vec![0u8; name_len + TAIL];
    let got = read_full(reader, &mut rest)?;
    if got < rest.len() {
        return Err(truncated(
            FIXED_HEADER + got,
            (FIXED_HEADER + rest.len()) as u64,
        ));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&rest[name_len..name_len + 8]);
    let payload_len = u64::from_le_bytes(len8);
    if payload_len > max_payload {
        return Err(FormatError::malformed(
            "veilmoe file",
            format!(
                "an object claims {payload_len} payload bytes, more than the {max_payload} the \
                 expected object can take (corrupted or not the expected file)"
            ),
        ));
    }
    buf.extend_from_slice(&rest);
    let head = buf.len();
    let got = reader
        .take(payload_len)
        .read_to_end(&mut buf)
        .map_err(|source| FormatError::Io {
            path: "<stream>".into(),
            source,
        })?;
    if (got as u64) < payload_len {
        return Err(truncated(head + got, head as u64 + payload_len));
    }
    Ok(Some(buf))
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FormatError::Io {
                    path: "<stream>".into(),
                    source,
                })
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> Binding {
        Binding {
            preset: PresetFingerprint([7; 16]),
            preset_name: "p".into(),
            key_set: KeySetId([9; 16]),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(ObjectKind::Batch, &bound(), &vec![1u32, 2, 3]).unwrap();
        let (h, p) = read_header(&bytes).unwrap();
        assert_eq!(h.binding(), bound());
        let v: Vec<u32> = decode_payload(h.kind, p).unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        assert!(h.expect(ObjectKind::Results, h.preset, "p", None).is_err());
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(read_header(&flipped)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(read_header(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn a_small_file_claiming_a_huge_payload_is_refused_without_allocating() {
        let mut bytes = encode(ObjectKind::Batch, &bound(), &0u8).unwrap();
        let at = FIXED_HEADER + 1;
        bytes[at..at + 8].copy_from_slice(&(64u64 << 30).to_le_bytes());
        let err = read_envelope(&mut bytes.as_slice(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
        // Within the limit but beyond the stream: truncated, and only what was read is held.
        let err = read_envelope(&mut bytes.as_slice(), u64::MAX).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_payload_length_field_cannot_allocate_beyond_the_payload() {
        // A Vec<u64> whose bincode length claims 2^40 elements, in a 16-byte payload.
        let mut payload = (1u64 << 40).to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 8]);
        let err = decode_payload::<Vec<u64>>(ObjectKind::Batch, &payload).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }
}
