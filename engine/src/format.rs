//! The on-disk envelope of every veilmoe object (keys, ciphertext batches, results).
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

use crate::error::{EngineError, Result};
use crate::preset::{Preset, PresetFingerprint};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

/// File magic.
pub const MAGIC: [u8; 8] = *b"VEILMOE\0";
/// Current envelope format version.
pub const FORMAT_VERSION: u16 = 1;

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
    ServerKey = 2,
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
}

impl ObjectKind {
    pub fn from_u16(v: u16) -> Option<ObjectKind> {
        use ObjectKind::*;
        [
            ClientKey,
            ServerKey,
            CompressedServerKey,
            LweVector,
            PackedGlwe,
            SeededPackedGlwe,
            Batch,
            Results,
            BatchRecord,
            ResultRecord,
        ]
        .into_iter()
        .find(|k| *k as u16 == v)
    }

    /// Human name, used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::ClientKey => "client key",
            ObjectKind::ServerKey => "server key",
            ObjectKind::CompressedServerKey => "compressed server key",
            ObjectKind::LweVector => "LWE ciphertext vector",
            ObjectKind::PackedGlwe => "packed GLWE ciphertext",
            ObjectKind::SeededPackedGlwe => "seeded packed GLWE ciphertext",
            ObjectKind::Batch => "encrypted batch",
            ObjectKind::Results => "encrypted results",
            ObjectKind::BatchRecord => "encrypted batch record",
            ObjectKind::ResultRecord => "encrypted result record",
        }
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
    /// Refuses an envelope of another kind, preset or key set.
    pub fn expect(
        &self,
        kind: ObjectKind,
        preset: &Preset,
        key_set: Option<KeySetId>,
    ) -> Result<()> {
        if self.kind != kind {
            return Err(EngineError::Format {
                what: kind.name(),
                reason: format!(
                    "this file holds a {}, not a {}",
                    self.kind.name(),
                    kind.name()
                ),
            });
        }
        if self.preset != preset.fingerprint() {
            return Err(EngineError::PresetMismatch {
                what: kind.name(),
                expected: preset.name.clone(),
                found: self.preset_name.clone(),
            });
        }
        if let Some(ks) = key_set {
            if ks != self.key_set {
                return Err(EngineError::KeySetMismatch {
                    what: kind.name(),
                    expected: ks.to_string(),
                    found: self.key_set.to_string(),
                });
            }
        }
        Ok(())
    }
}

const FIXED_HEADER: usize = 8 + 2 + 2 + 16 + 16 + 2;

/// Serializes `value` into an envelope.
pub fn encode<T: Serialize>(
    kind: ObjectKind,
    preset: &Preset,
    key_set: KeySetId,
    value: &T,
) -> Result<Vec<u8>> {
    let payload = bincode::serialize(value).map_err(|e| EngineError::Format {
        what: kind.name(),
        reason: format!("cannot serialize: {e}"),
    })?;
    let name = preset.name.as_bytes();
    let name_len = u16::try_from(name.len())
        .map_err(|_| EngineError::range("envelope", "preset name longer than 65535 bytes"))?;
    let mut out = Vec::with_capacity(FIXED_HEADER + name.len() + 24 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&preset.fingerprint().0);
    out.extend_from_slice(&key_set.0);
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload)[..16]);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Serializes `value` into an envelope with the same preset and key set as `like` (for tools
/// that rewrite files, such as merging shards, without loading the preset).
pub fn encode_like<T: Serialize>(like: &Header, kind: ObjectKind, value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serialize(value).map_err(|e| EngineError::Format {
        what: kind.name(),
        reason: format!("cannot serialize: {e}"),
    })?;
    let name = like.preset_name.as_bytes();
    let mut out = Vec::with_capacity(FIXED_HEADER + name.len() + 24 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&like.preset.0);
    out.extend_from_slice(&like.key_set.0);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload)[..16]);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads only the header; `what` names the expected object in errors.
pub fn read_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let bad = |reason: String| EngineError::Format {
        what: "veilmoe file",
        reason,
    };
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
    if rest.len() < name_len + 24 {
        return Err(bad("truncated header".into()));
    }
    let preset_name = String::from_utf8(rest[..name_len].to_vec())
        .map_err(|_| bad("preset name is not UTF-8".into()))?;
    let rest = &rest[name_len..];
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&rest[..8]);
    let payload_len = u64::from_le_bytes(len8);
    let mut checksum = [0u8; 16];
    checksum.copy_from_slice(&rest[8..24]);
    let payload = &rest[24..];
    Ok((
        Header {
            version,
            kind,
            preset: PresetFingerprint(preset),
            key_set: KeySetId(key_set),
            preset_name,
            payload_len,
            checksum,
        },
        payload,
    ))
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
    check_payload(&header, payload, kind)?;
    header.expect(kind, preset, key_set)?;
    let value = bincode::deserialize(payload).map_err(|e| EngineError::Format {
        what: kind.name(),
        reason: format!("payload does not decode: {e}"),
    })?;
    Ok((header, value))
}

/// Verifies the payload's length and checksum against the header.
pub fn check_payload(header: &Header, payload: &[u8], kind: ObjectKind) -> Result<()> {
    if (payload.len() as u64) < header.payload_len {
        return Err(EngineError::Format {
            what: kind.name(),
            reason: format!(
                "truncated: payload has {} of {} bytes",
                payload.len(),
                header.payload_len
            ),
        });
    }
    if (payload.len() as u64) > header.payload_len {
        return Err(EngineError::Format {
            what: kind.name(),
            reason: format!(
                "{} trailing bytes after the payload",
                payload.len() as u64 - header.payload_len
            ),
        });
    }
    if Sha256::digest(payload)[..16] != header.checksum {
        return Err(EngineError::Format {
            what: kind.name(),
            reason: "checksum mismatch: the file is corrupted".into(),
        });
    }
    Ok(())
}

/// Reads a whole file.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A crash or error never leaves a half-written `path` behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| EngineError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads the next whole envelope from a stream of concatenated envelopes (batch and results
/// files are a header envelope followed by one envelope per record, so a job can stream them
/// and a killed writer leaves at worst one incomplete envelope at the end).
///
/// Returns `Ok(None)` at a clean end of stream, and an error naming the truncation when the
/// stream ends inside an envelope. The envelope is not yet checked: pass it to [`decode`].
pub fn read_envelope(reader: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let truncated = |got: usize, want: usize| EngineError::Format {
        what: "veilmoe file",
        reason: format!("truncated: the last object has {got} of at least {want} bytes"),
    };
    let mut buf = vec![0u8; FIXED_HEADER];
    let got = read_full(reader, &mut buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < FIXED_HEADER {
        return Err(truncated(got, FIXED_HEADER));
    }
    if buf[..8] != MAGIC {
        return Err(EngineError::Format {
            what: "veilmoe file",
            reason: "not a veilmoe object (wrong magic bytes)".into(),
        });
    }
    let name_len = u16::from_le_bytes([buf[44], buf[45]]) as usize;
    let mut rest = vec![0u8; name_len + 24];
    let got = read_full(reader, &mut rest)?;
    if got < rest.len() {
        return Err(truncated(FIXED_HEADER + got, FIXED_HEADER + rest.len()));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&rest[name_len..name_len + 8]);
    let payload_len = u64::from_le_bytes(len8);
    const MAX_OBJECT: u64 = 1 << 36;
    if payload_len > MAX_OBJECT {
        return Err(EngineError::Format {
            what: "veilmoe file",
            reason: format!(
                "object of {payload_len} bytes is implausibly large (corrupted length)"
            ),
        });
    }
    buf.extend_from_slice(&rest);
    let head = buf.len();
    buf.resize(head + payload_len as usize, 0);
    let got = read_full(reader, &mut buf[head..])?;
    if got < payload_len as usize {
        return Err(truncated(head + got, head + payload_len as usize));
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
                return Err(EngineError::Io {
                    path: "<stream>".into(),
                    source,
                })
            }
        }
    }
    Ok(done)
}
