//! Batch (`.vmb`) and results files: a header envelope followed by one envelope per record.
//!
//! ```text
//! batch.vmb   = envelope(Batch: BatchMeta)     envelope(BatchRecord) x records
//! results.vmb = envelope(Results: ResultsMeta) envelope(ResultRecord) x records of the shard
//! ```
//!
//! Every envelope carries the preset fingerprint and key-set id and its own length and checksum
//! (engine `format`), so a reader streams records one at a time, refuses a file made for another
//! key, preset or model before any work, and names a truncated or corrupted record. A job's
//! checkpoint file has the same layout as a results file, so a killed job leaves at worst one
//! incomplete record at its end.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;
use veilmoe_engine::format::{self, KeySetId, ObjectKind};
use veilmoe_engine::{EngineError, LweVector, Preset, SeededPackedGlwe};
use veilmoe_protocols::QuantizedClassifier;

/// What can go wrong with batch and results files.
#[derive(Debug, Error)]
pub enum BatchError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path}: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, BatchError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Identifies a quantized model: the first 16 bytes (hex) of the SHA-256 of its serialized
/// public description. A batch encrypted for one model is refused by another, since the input
/// encoding and quantization depend on the weights.
pub fn model_id(model: &QuantizedClassifier) -> String {
    let bytes = bincode::serialize(model).unwrap_or_default();
    hex(&Sha256::digest(&bytes)[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random batch id (ties shards and their merge to one batch).
pub fn new_batch_id() -> String {
    let mut b = [0u8; 16];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let digest = Sha256::digest(format!("{t}-{}-{:p}", std::process::id(), &b));
    b.copy_from_slice(&digest[..16]);
    hex(&b)
}

/// The batch header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub batch_id: String,
    pub model_id: String,
    pub records: u64,
    pub features: usize,
    /// Width of the input encoding the records were encrypted with.
    pub input_width: u32,
}

/// One encrypted record: its position in the batch and the packed quantized input.
#[derive(Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub index: u64,
    pub x: SeededPackedGlwe,
}

/// Which part of a batch a job runs: records with `index % count == part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub part: u32,
    pub count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { part: 0, count: 1 };

    /// Parses `i/n` (0 <= i < n).
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}` is not of the form i/n"))?;
        let part: u32 = a
            .trim()
            .parse()
            .map_err(|_| format!("shard index `{a}` is not a number"))?;
        let count: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("shard count `{b}` is not a number"))?;
        if count == 0 || part >= count {
            return Err(format!("shard {part}/{count}: need 0 <= i < n"));
        }
        Ok(Shard { part, count })
    }

    pub fn contains(&self, index: u64) -> bool {
        index % self.count as u64 == self.part as u64
    }

    /// How many of `records` records fall in this shard.
    pub fn size(&self, records: u64) -> u64 {
        (0..records).filter(|i| self.contains(*i)).count() as u64
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.part, self.count)
    }
}

/// The results header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsMeta {
    pub batch_id: String,
    pub model_id: String,
    /// Records in the whole batch.
    pub batch_records: u64,
    /// The shard's records are the ones this file holds.
    pub shard: Shard,
    pub strategy: String,
}

/// One encrypted result: the block output as weighted terms `y = sum c * term`, and the
/// record's input echoed back (the client needs it for the residual and the head, and the
/// server learns nothing from returning a ciphertext).
#[derive(Clone, Serialize, Deserialize)]
pub struct ResultRecord {
    pub index: u64,
    pub input: SeededPackedGlwe,
    pub terms: Vec<(i64, LweVector)>,
}

/// Streams the records of a file after its header envelope.
pub struct RecordReader {
    path: PathBuf,
    reader: BufReader<File>,
    preset: Preset,
    key_set: KeySetId,
    /// Bytes of whole, valid envelopes read so far.
    offset: u64,
}

impl RecordReader {
    /// Opens `path`, checks and decodes its header envelope of kind `kind` against the preset
    /// and key set.
    pub fn open<M: serde::de::DeserializeOwned>(
        path: &Path,
        kind: ObjectKind,
        preset: &Preset,
        key_set: KeySetId,
    ) -> Result<(M, RecordReader)> {
        let file = File::open(path).map_err(io(path))?;
        let mut reader = BufReader::new(file);
        let bytes = format::read_envelope(&mut reader)
            .map_err(|e| in_file(path, e))?
            .ok_or_else(|| BatchError::Mismatch {
                path: path.display().to_string(),
                reason: "empty file".into(),
            })?;
        let (_, meta) =
            format::decode(&bytes, kind, preset, Some(key_set)).map_err(|e| in_file(path, e))?;
        Ok((
            meta,
            RecordReader {
                path: path.to_path_buf(),
                reader,
                preset: preset.clone(),
                key_set,
                offset: bytes.len() as u64,
            },
        ))
    }

    /// The next record of kind `kind`, `None` at the end of the file.
    pub fn next<R: serde::de::DeserializeOwned>(&mut self, kind: ObjectKind) -> Result<Option<R>> {
        let Some(bytes) =
            format::read_envelope(&mut self.reader).map_err(|e| in_file(&self.path, e))?
        else {
            return Ok(None);
        };
        let (_, r) = format::decode(&bytes, kind, &self.preset, Some(self.key_set))
            .map_err(|e| in_file(&self.path, e))?;
        self.offset += bytes.len() as u64;
        Ok(Some(r))
    }

    /// Bytes of whole, valid envelopes read so far (where a resumed writer appends).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Like [`RecordReader::next`], but a truncated or corrupted last record ends the stream
    /// (returns `None`; [`RecordReader::offset`] is where the valid prefix ends) instead of failing: a
    /// job's checkpoint may end inside a record the killed job was writing.
    pub fn next_or_torn<R: serde::de::DeserializeOwned>(
        &mut self,
        kind: ObjectKind,
    ) -> Result<Option<R>> {
        match format::read_envelope(&mut self.reader) {
            Ok(Some(bytes)) => {
                match format::decode(&bytes, kind, &self.preset, Some(self.key_set)) {
                    Ok((_, r)) => {
                        self.offset += bytes.len() as u64;
                        Ok(Some(r))
                    }
                    Err(_) => Ok(None),
                }
            }
            Ok(None) | Err(EngineError::Format { .. }) => Ok(None),
            Err(e) => Err(in_file(&self.path, e)),
        }
    }
}

/// Prefixes an engine error with the file it came from.
fn in_file(path: &Path, e: EngineError) -> BatchError {
    BatchError::Mismatch {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Appends envelopes to a file (used for checkpoints: each record is flushed and synced, so a
/// killed job loses at most the record in flight).
pub struct RecordWriter {
    path: PathBuf,
    out: BufWriter<File>,
    preset: Preset,
    key_set: KeySetId,
}

impl RecordWriter {
    /// Creates (truncating) `path` and writes the header envelope.
    pub fn create<M: Serialize>(
        path: &Path,
        kind: ObjectKind,
        meta: &M,
        preset: &Preset,
        key_set: KeySetId,
    ) -> Result<RecordWriter> {
        let file = File::create(path).map_err(io(path))?;
        let mut w = RecordWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            preset: preset.clone(),
            key_set,
        };
        w.append(kind, meta)?;
        Ok(w)
    }

    /// Opens `path` for appending after its first `valid_len` bytes (dropping a torn tail).
    pub fn resume(
        path: &Path,
        valid_len: u64,
        preset: &Preset,
        key_set: KeySetId,
    ) -> Result<RecordWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(valid_len).map_err(io(path))?;
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).map_err(io(path))?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            preset: preset.clone(),
            key_set,
        })
    }

    /// Appends one envelope and makes it durable.
    pub fn append<T: Serialize>(&mut self, kind: ObjectKind, value: &T) -> Result<()> {
        let bytes = format::encode(kind, &self.preset, self.key_set, value)?;
        let path = self.path.clone();
        self.out.write_all(&bytes).map_err(io(&path))?;
        self.out.flush().map_err(io(&path))?;
        self.out.get_ref().sync_data().map_err(io(&path))?;
        Ok(())
    }
}

/// Serializes a whole file (header + records) in memory, for atomic writes of finished outputs.
pub fn encode_file<M: Serialize, R: Serialize>(
    kind: ObjectKind,
    meta: &M,
    record_kind: ObjectKind,
    records: &[R],
    preset: &Preset,
    key_set: KeySetId,
) -> Result<Vec<u8>> {
    let mut out = format::encode(kind, preset, key_set, meta)?;
    for r in records {
        out.extend_from_slice(&format::encode(record_kind, preset, key_set, r)?);
    }
    Ok(out)
}
