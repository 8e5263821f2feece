//! Server: run the encrypted model over the shard's records of a batch, with checkpoints.
//!
//! The server streams the batch one record at a time; each record's evaluation uses every core
//! (rayon inside the engine). After each record the result is appended to `OUT.partial` and
//! synced, so a killed job continues with `--resume` from the first record it had not finished;
//! the partial file has the layout of a results file and is renamed onto `OUT` when the shard
//! is complete, so `OUT` is either absent or whole.

use super::{in_file, usage, JobError, Progress, Result};
use crate::files::{FileError, RecordReader, RecordWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;
use veilmoe_engine::format::ObjectKind;
use veilmoe_engine::ServerKey;
use veilmoe_protocols::session::wire::{
    max_batch_record_bytes, max_result_record_bytes, MAX_META_BYTES,
};
use veilmoe_protocols::session::{BatchMeta, BatchRecord, ResultRecord, ResultsMeta, Shard};
use veilmoe_protocols::ServerSession;

/// Options of an inference job.
pub struct InferOptions {
    pub shard: Shard,
    pub resume: bool,
    /// Records evaluated side by side (at least 1): small models leave cores idle within one
    /// record, so several records at once raise the throughput.
    pub parallel_records: usize,
}

/// What a job did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InferSummary {
    pub records_in_shard: u64,
    pub resumed_records: u64,
    pub computed_records: u64,
    pub seconds: f64,
    pub seconds_per_record: f64,
}

/// The checkpoint a job keeps beside its output.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Reads the batch header and opens the record stream, bounded by the session's model.
fn open_batch(
    server: &ServerKey,
    session: &ServerSession,
    input: &Path,
) -> Result<(BatchMeta, RecordReader)> {
    let (meta, reader): (BatchMeta, _) = RecordReader::open(
        input,
        ObjectKind::Batch,
        server.preset(),
        server.key_set(),
        MAX_META_BYTES,
        max_batch_record_bytes(server.preset(), session.layer().model()),
    )?;
    session.check_batch(&meta).map_err(in_file(input))?;
    Ok((meta, reader))
}

/// Runs the encrypted model over the shard's records of `input`, writing `out`.
pub fn infer(
    server: &ServerKey,
    session: &ServerSession,
    input: &Path,
    out: &Path,
    opts: &InferOptions,
    progress: Progress,
) -> Result<InferSummary> {
    let (preset, key_set) = (server.preset(), server.key_set());
    let (meta, scan) = open_batch(server, session, input)?;
    check_batch(input, &meta, scan)?;
    let (_, mut records) = open_batch(server, session, input)?;
    let results_meta = session.results_meta(&meta, opts.shard);
    let shard_size = opts.shard.size(meta.records);
    let partial = partial_path(out);
    let (mut writer, done) = if partial.exists() {
        if !opts.resume {
            return Err(usage(format!(
                "{} exists from an earlier run: pass --resume to continue it, or delete it",
                partial.display()
            )));
        }
        resume_checkpoint(server, session, &partial, &results_meta)?
    } else {
        (
            RecordWriter::create(
                &partial,
                ObjectKind::Results,
                &results_meta,
                preset,
                key_set,
            )?,
            0,
        )
    };
    let start = Instant::now();
    let run = run_records(
        session,
        input,
        &mut records,
        &mut writer,
        opts,
        done,
        shard_size,
        progress,
    );
    drop(writer);
    let computed = match run {
        Ok(c) => c,
        Err(e) => {
            // A checkpoint without a finished record holds nothing worth resuming.
            if done == 0 && !matches!(e, JobError::File(FileError::Io { .. })) {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|source| FileError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(InferSummary {
        records_in_shard: shard_size,
        resumed_records: done,
        computed_records: computed,
        seconds,
        seconds_per_record: if computed > 0 {
            seconds / computed as f64
        } else {
            0.0
        },
    })
}

/// Reads the whole batch once before any work: every record decodes, indices run 0, 1, ... and
/// the count matches the header, so a truncated or corrupted batch fails before any output.
fn check_batch(input: &Path, meta: &BatchMeta, mut records: RecordReader) -> Result<()> {
    let mut n = 0u64;
    while let Some(rec) = records.next::<BatchRecord>(ObjectKind::BatchRecord)? {
        if rec.index != n {
            return Err(usage(format!(
                "{}: record {n} is labelled {} (records out of order or duplicated)",
                input.display(),
                rec.index
            )));
        }
        n += 1;
        if n > meta.records {
            break;
        }
    }
    if n != meta.records {
        return Err(usage(format!(
            "{}: {n} records where the header promises {} (truncated or padded batch)",
            input.display(),
            meta.records
        )));
    }
    Ok(())
}

/// Evaluates the shard's records after the first `done`, `opts.parallel_records` at a time,
/// appending each result to the checkpoint in batch order; returns how many it computed.
#[allow(clippy::too_many_arguments)]
fn run_records(
    session: &ServerSession,
    input: &Path,
    records: &mut RecordReader,
    writer: &mut RecordWriter,
    opts: &InferOptions,
    done: u64,
    shard_size: u64,
    progress: Progress,
) -> Result<u64> {
    let start = Instant::now();
    let mut position = 0u64; // records of this shard seen so far
    let mut computed = 0u64;
    let per_round = opts.parallel_records.max(1);
    progress(done, shard_size, 0.0);
    loop {
        let mut round = Vec::with_capacity(per_round);
        while round.len() < per_round {
            let Some(rec) = records.next::<BatchRecord>(ObjectKind::BatchRecord)? else {
                break;
            };
            if !opts.shard.contains(rec.index) {
                continue;
            }
            position += 1;
            if position > done {
                round.push(rec);
            }
        }
        if round.is_empty() {
            break;
        }
        for result in session.evaluate_many(round) {
            writer.append(ObjectKind::ResultRecord, &result.map_err(in_file(input))?)?;
            computed += 1;
            let secs = start.elapsed().as_secs_f64();
            progress(done + computed, shard_size, secs / computed as f64);
        }
    }
    if done + computed != shard_size {
        return Err(usage(format!(
            "{}: the batch header promises {} records in shard {}, the file holds {}",
            input.display(),
            shard_size,
            opts.shard,
            done + computed
        )));
    }
    Ok(computed)
}

/// Opens a checkpoint for appending: checks it belongs to this job and counts its whole
/// records (a torn last record, from a kill mid-write, is dropped).
fn resume_checkpoint(
    server: &ServerKey,
    session: &ServerSession,
    partial: &Path,
    expect: &ResultsMeta,
) -> Result<(RecordWriter, u64)> {
    let (meta, mut reader): (ResultsMeta, _) = RecordReader::open(
        partial,
        ObjectKind::Results,
        server.preset(),
        server.key_set(),
        MAX_META_BYTES,
        max_result_record_bytes(server.preset(), session.layer().model()),
    )?;
    if &meta != expect {
        return Err(usage(format!(
            "{} belongs to another job (batch {}, shard {}, strategy {}); delete it to start over",
            partial.display(),
            meta.batch_id,
            meta.shard,
            meta.strategy
        )));
    }
    let mut done = 0u64;
    while reader
        .next_or_torn::<ResultRecord>(ObjectKind::ResultRecord)?
        .is_some()
    {
        done += 1;
    }
    let writer = RecordWriter::resume(partial, reader.offset(), server.preset(), server.key_set())?;
    Ok((writer, done))
}
