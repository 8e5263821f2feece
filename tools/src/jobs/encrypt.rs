//! Client: quantize and encrypt records into a batch file.

use super::{usage, JobError, Result};
use crate::files::encode_file;
use std::path::Path;
use veilmoe_engine::format::{self, ObjectKind};
use veilmoe_protocols::session::BatchMeta;
use veilmoe_protocols::ClientSession;

/// Encrypts `records` into a batch file at `out` (written atomically).
pub fn encrypt_batch(
    session: &ClientSession,
    records: &[Vec<f32>],
    out: &Path,
) -> Result<BatchMeta> {
    let key = session.key();
    let meta = session.new_batch(records.len() as u64);
    let encrypted = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            session
                .encrypt_record(&meta, i as u64, r)
                .map_err(|e| usage(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = encode_file(
        ObjectKind::Batch,
        &meta,
        ObjectKind::BatchRecord,
        &encrypted,
        key.preset(),
        key.key_set(),
    )?;
    format::write_atomic(out, &bytes).map_err(|e| JobError::Engine(e.into()))?;
    Ok(meta)
}
