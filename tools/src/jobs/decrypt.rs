//! Client: check and decrypt a results file into predictions.

use super::{in_file, usage, Result};
use crate::files::RecordReader;
use std::path::Path;
use veilmoe_engine::format::{self, ObjectKind};
use veilmoe_protocols::session::wire::{max_result_record_bytes, MAX_META_BYTES};
use veilmoe_protocols::session::{Prediction, ResultRecord, ResultsMeta};
use veilmoe_protocols::ClientSession;

/// Decrypts a results file: every record is checked by the session (its echo is this client's
/// own ciphertext, its terms have the model's structure) before it is decrypted, records must
/// come in increasing order, and the shard must be complete.
pub fn decrypt_results(
    session: &ClientSession,
    input: &Path,
) -> Result<(ResultsMeta, Vec<Prediction>)> {
    let (key, model) = (session.key(), session.model());
    let (meta, mut reader): (ResultsMeta, _) = RecordReader::open(
        input,
        ObjectKind::Results,
        key.preset(),
        key.key_set(),
        MAX_META_BYTES,
        max_result_record_bytes(key.preset(), &model.moe),
    )?;
    session.check_results(&meta).map_err(in_file(input))?;
    let expect = meta.shard.size(meta.batch_records);
    let mut out: Vec<Prediction> = Vec::new();
    while let Some(rec) = reader.next::<ResultRecord>(ObjectKind::ResultRecord)? {
        if out.last().is_some_and(|p| p.index >= rec.index) || out.len() as u64 >= expect {
            return Err(usage(format!(
                "{}: record {} is out of order, repeated or beyond the shard",
                input.display(),
                rec.index
            )));
        }
        out.push(
            session
                .decrypt_record(&meta, &rec)
                .map_err(in_file(input))?,
        );
    }
    if out.len() as u64 != expect {
        return Err(usage(format!(
            "{}: {} of {expect} records (truncated results?)",
            input.display(),
            out.len()
        )));
    }
    Ok((meta, out))
}

/// Writes predictions as CSV (record, class, one column per output), atomically.
pub fn write_predictions(path: &Path, preds: &[Prediction]) -> Result<()> {
    let n = preds.first().map_or(0, |p| p.outputs.len());
    let mut s = String::from("record,class");
    for i in 0..n {
        s.push_str(&format!(",out{i}"));
    }
    s.push('\n');
    for p in preds {
        s.push_str(&format!("{},{}", p.index, p.class));
        for v in &p.outputs {
            s.push_str(&format!(",{v}"));
        }
        s.push('\n');
    }
    format::write_atomic(path, s.as_bytes()).map_err(|e| super::JobError::Engine(e.into()))?;
    Ok(())
}
