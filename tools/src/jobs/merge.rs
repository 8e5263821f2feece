//! Merge the results of all shards of one batch into one results file.
//!
//! The merge needs no key and no model: it checks that the parts are all shards of one batch,
//! model, strategy, preset and key set, that each is complete and holds only its own records,
//! and writes the records in batch order.

use super::{usage, JobError, Result};
use crate::files::FileError;
use std::path::{Path, PathBuf};
use veilmoe_engine::format::{self, ObjectKind};
use veilmoe_protocols::session::wire::MAX_META_BYTES;
use veilmoe_protocols::session::{ResultRecord, ResultsMeta, Shard};

/// Largest results file merged (each is held in memory).
pub const MAX_MERGE_FILE_BYTES: u64 = 64 << 30;

/// Merges the results of all shards of one batch into one results file (written atomically).
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<u64> {
    if parts.is_empty() {
        return Err(usage("merge needs at least one results file"));
    }
    let mut first: Option<(format::Header, ResultsMeta)> = None;
    let mut seen_parts = Vec::new();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    for path in parts {
        let bytes = format::read_file(path, MAX_MERGE_FILE_BYTES)?;
        let mut cursor = std::io::Cursor::new(bytes.as_slice());
        let in_path = |e: format::FormatError| FileError::Bad {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let head = format::read_envelope(&mut cursor, MAX_META_BYTES)
            .map_err(in_path)?
            .ok_or_else(|| usage(format!("{}: empty file", path.display())))?;
        let (header, payload) = format::read_header(&head).map_err(in_path)?;
        if header.kind != ObjectKind::Results {
            return Err(usage(format!(
                "{}: holds a {}, not encrypted results",
                path.display(),
                header.kind.name()
            )));
        }
        let meta: ResultsMeta =
            format::decode_payload(ObjectKind::Results, payload).map_err(in_path)?;
        meta.shard
            .validate()
            .map_err(|e| usage(format!("{}: {e}", path.display())))?;
        match &first {
            None => first = Some((header.clone(), meta.clone())),
            Some((h0, m0)) => {
                if h0.preset != header.preset || h0.key_set != header.key_set {
                    return Err(usage(format!(
                        "{}: another preset or key set than {}",
                        path.display(),
                        parts[0].display()
                    )));
                }
                if m0.batch_id != meta.batch_id
                    || m0.model_id != meta.model_id
                    || m0.strategy != meta.strategy
                    || m0.shard.count() != meta.shard.count()
                {
                    return Err(usage(format!(
                        "{}: not a shard of the same batch, model, strategy and shard count as {}",
                        path.display(),
                        parts[0].display()
                    )));
                }
            }
        }
        if seen_parts.contains(&meta.shard.part()) {
            return Err(usage(format!(
                "{}: shard {} given twice",
                path.display(),
                meta.shard
            )));
        }
        seen_parts.push(meta.shard.part());
        let mut count = 0u64;
        while let Some(env) =
            format::read_envelope(&mut cursor, MAX_MERGE_FILE_BYTES).map_err(in_path)?
        {
            let (h, p) = format::read_header(&env).map_err(in_path)?;
            h.expect_kind(ObjectKind::ResultRecord).map_err(in_path)?;
            if h.binding() != header.binding() {
                return Err(usage(format!(
                    "{}: a record of another preset or key set than its header",
                    path.display()
                )));
            }
            let rec: ResultRecord =
                format::decode_payload(ObjectKind::ResultRecord, p).map_err(in_path)?;
            if !meta.shard.contains(rec.index) || rec.index >= meta.batch_records {
                return Err(usage(format!(
                    "{}: record {} does not belong to shard {}",
                    path.display(),
                    rec.index,
                    meta.shard
                )));
            }
            records.push((rec.index, env));
            count += 1;
        }
        if count != meta.shard.size(meta.batch_records) {
            return Err(usage(format!(
                "{}: shard {} is incomplete ({count} of {} records)",
                path.display(),
                meta.shard,
                meta.shard.size(meta.batch_records)
            )));
        }
    }
    let (header, meta) = first.ok_or_else(|| usage("no results files"))?;
    if seen_parts.len() as u32 != meta.shard.count() {
        let missing: Vec<String> = (0..meta.shard.count())
            .filter(|p| !seen_parts.contains(p))
            .map(|p| format!("{p}/{}", meta.shard.count()))
            .collect();
        return Err(usage(format!("missing shards: {}", missing.join(", "))));
    }
    records.sort_by_key(|(i, _)| *i);
    let merged = ResultsMeta {
        shard: Shard::WHOLE,
        ..meta
    };
    records.dedup_by_key(|(i, _)| *i);
    let mut bytes = format::encode_like(&header, ObjectKind::Results, &merged)?;
    for (_, env) in &records {
        bytes.extend_from_slice(env);
    }
    format::write_atomic(out, &bytes).map_err(|e| JobError::Engine(e.into()))?;
    Ok(records.len() as u64)
}
