//! Record streams: batch and results files are a header envelope followed by one envelope per
//! record (the messages themselves are defined by the protocol's session API,
//! `veilmoe_protocols::session::wire`).
//!
//! Every envelope carries the preset fingerprint and key-set id and its own length and checksum,
//! so a reader streams records one at a time, refuses a file made for another key, preset or
//! model before any work, and names a truncated or corrupted record. Every read is bounded by
//! the largest payload the caller expects (from the preset and the model). A job's checkpoint
//! file has the same layout as a results file, so a killed job leaves at worst one incomplete
//! record at its end.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;
use veilmoe_engine::format::{self, KeySetId, ObjectKind};
use veilmoe_engine::{EngineError, Preset};

/// What can go wrong with batch and results files.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {reason}")]
    Bad { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, FileError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Prefixes an engine error with the file it came from.
fn in_file(path: &Path, e: EngineError) -> FileError {
    FileError::Bad {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Streams the records of a file after its header envelope.
pub struct RecordReader {
    path: PathBuf,
    reader: BufReader<File>,
    preset: Preset,
    key_set: KeySetId,
    max_record: u64,
    /// Bytes of whole, valid envelopes read so far.
    offset: u64,
}

impl RecordReader {
    /// Opens `path`, checks and decodes its header envelope of kind `kind` (at most
    /// `max_header` payload bytes) against the preset and key set; records will be read with at
    /// most `max_record` payload bytes each.
    pub fn open<M: serde::de::DeserializeOwned>(
        path: &Path,
        kind: ObjectKind,
        preset: &Preset,
        key_set: KeySetId,
        max_header: u64,
        max_record: u64,
    ) -> Result<(M, RecordReader)> {
        let file = File::open(path).map_err(io(path))?;
        let mut reader = BufReader::new(file);
        let bytes = format::read_envelope(&mut reader, max_header)
            .map_err(|e| in_file(path, e.into()))?
            .ok_or_else(|| FileError::Bad {
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
                max_record,
                offset: bytes.len() as u64,
            },
        ))
    }

    /// The next record of kind `kind`, `None` at the end of the file.
    pub fn next<R: serde::de::DeserializeOwned>(&mut self, kind: ObjectKind) -> Result<Option<R>> {
        let Some(bytes) = format::read_envelope(&mut self.reader, self.max_record)
            .map_err(|e| in_file(&self.path, e.into()))?
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
    /// (returns `None`; [`RecordReader::offset`] is where the valid prefix ends) instead of
    /// failing: a job's checkpoint may end inside a record the killed job was writing.
    pub fn next_or_torn<R: serde::de::DeserializeOwned>(
        &mut self,
        kind: ObjectKind,
    ) -> Result<Option<R>> {
        match format::read_envelope(&mut self.reader, self.max_record) {
            Ok(Some(bytes)) => {
                match format::decode(&bytes, kind, &self.preset, Some(self.key_set)) {
                    Ok((_, r)) => {
                        self.offset += bytes.len() as u64;
                        Ok(Some(r))
                    }
                    Err(_) => Ok(None),
                }
            }
            Ok(None) | Err(format::FormatError::Malformed { .. }) => Ok(None),
            Err(e) => Err(in_file(&self.path, e.into())),
        }
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
    /// Creates `path` (refusing to follow or overwrite an existing file) and writes the header
    /// envelope.
    pub fn create<M: serde::Serialize>(
        path: &Path,
        kind: ObjectKind,
        meta: &M,
        preset: &Preset,
        key_set: KeySetId,
    ) -> Result<RecordWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(path))?;
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
        use std::io::Seek;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(valid_len).map_err(io(path))?;
        file.seek(std::io::SeekFrom::End(0)).map_err(io(path))?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            preset: preset.clone(),
            key_set,
        })
    }

    /// Appends one envelope and makes it durable.
    pub fn append<T: serde::Serialize>(&mut self, kind: ObjectKind, value: &T) -> Result<()> {
        let bytes = format::encode(kind, &self.preset, self.key_set, value)
            .map_err(|e| in_file(&self.path, e))?;
        let path = self.path.clone();
        self.out.write_all(&bytes).map_err(io(&path))?;
        self.out.flush().map_err(io(&path))?;
        self.out.get_ref().sync_data().map_err(io(&path))?;
        Ok(())
    }
}

/// Serializes a whole file (header + records) in memory, for atomic writes of finished outputs.
pub fn encode_file<M: serde::Serialize, R: serde::Serialize>(
    kind: ObjectKind,
    meta: &M,
    record_kind: ObjectKind,
    records: &[R],
    preset: &Preset,
    key_set: KeySetId,
) -> std::result::Result<Vec<u8>, EngineError> {
    let mut out = format::encode(kind, preset, key_set, meta)?;
    for r in records {
        out.extend_from_slice(&format::encode(record_kind, preset, key_set, r)?);
    }
    Ok(out)
}
