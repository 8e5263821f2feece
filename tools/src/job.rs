//! Offline encrypted batch jobs: encrypt a batch (client), run the encrypted model over it with
//! checkpoints, resume and sharding (server), merge shards, decrypt (client).
//!
//! The server streams the batch one record at a time; each record's evaluation uses every core
//! (rayon inside the engine). After each record the result is appended to `OUT.partial` and
//! synced, so a killed job continues with `--resume` from the first record it had not finished;
//! the partial file has the layout of a results file and is renamed onto `OUT` when the shard
//! is complete, so `OUT` is either absent or whole.

use crate::batch::{
    encode_file, model_id, new_batch_id, BatchError, BatchMeta, BatchRecord, RecordReader,
    RecordWriter, ResultRecord, ResultsMeta, Shard,
};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;
use veilmoe_engine::format::{self, ObjectKind};
use veilmoe_engine::{ClientKey, EngineError, Evaluator, ServerKey, ValueRange};
use veilmoe_protocols::{
    predicted_class, ComputeAll, ExpertStrategy, MoeLayer, ProtocolError, QuantizedClassifier,
    Select,
};

#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, JobError>;

fn usage(s: impl Into<String>) -> JobError {
    JobError::Usage(s.into())
}

/// The strategies a batch job may use. `public-routing` is refused: it needs the client to
/// reveal each token's routing to the server (an INSECURE benchmark reference only).
pub fn strategy_by_name(name: &str) -> Result<&'static dyn ExpertStrategy> {
    match name {
        "select" => Ok(&Select),
        "compute-all" => Ok(&ComputeAll),
        "public-routing" => Err(usage(
            "strategy `public-routing` reveals the routing to the server (INSECURE) and needs the \
             client online; it exists only in `veilmoe bench moe`",
        )),
        "select-weights" => Err(usage(
            "strategy `select-weights` is not implemented yet (see issue 3); use select",
        )),
        other => Err(usage(format!(
            "unknown strategy `{other}` (select, compute-all)"
        ))),
    }
}

/// Client: quantizes and encrypts `records` into a batch file at `out` (written atomically).
pub fn encrypt_batch(
    client: &ClientKey,
    model: &QuantizedClassifier,
    records: &[Vec<f32>],
    out: &Path,
) -> Result<BatchMeta> {
    let preset = client.preset();
    let input_encoding = veilmoe_engine::Encoding::signed(model.moe.input_width());
    let meta = BatchMeta {
        batch_id: new_batch_id(),
        model_id: model_id(model),
        records: records.len() as u64,
        features: model.features(),
        input_width: model.moe.input_width(),
    };
    let encrypted = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let x = model.quantize_input(r).map_err(|e| match e {
                ProtocolError::Config(m) => usage(format!("record {i}: {m}")),
                other => other.into(),
            })?;
            Ok(BatchRecord {
                index: i as u64,
                x: client.encrypt_packed_seeded(&x, input_encoding)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = encode_file(
        ObjectKind::Batch,
        &meta,
        ObjectKind::BatchRecord,
        &encrypted,
        preset,
        client.key_set(),
    )?;
    format::write_atomic(out, &bytes)?;
    Ok(meta)
}

/// Options of an inference job.
pub struct InferOptions<'a> {
    pub strategy: &'a str,
    pub shard: Shard,
    pub resume: bool,
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

/// Progress of a job: (records done in this shard, shard size, seconds per record so far).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, f64);

/// The checkpoint next to an output file.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Server: runs the encrypted model over the shard's records of `input`, writing `out`.
pub fn infer(
    server: &ServerKey,
    model: &QuantizedClassifier,
    input: &Path,
    out: &Path,
    opts: &InferOptions,
    progress: Progress,
) -> Result<InferSummary> {
    let strategy = strategy_by_name(opts.strategy)?;
    let preset = server.preset();
    let key_set = server.key_set();
    let (meta, scan): (BatchMeta, _) =
        RecordReader::open(input, ObjectKind::Batch, preset, key_set)?;
    let id = model_id(model);
    if meta.model_id != id {
        return Err(usage(format!(
            "{}: the batch was encrypted for model {}, this model is {id}",
            input.display(),
            meta.model_id
        )));
    }
    if meta.features != model.features() || meta.input_width != model.moe.input_width() {
        return Err(usage(format!(
            "{}: the batch has {} features at input width {}, the model takes {} at width {}",
            input.display(),
            meta.features,
            meta.input_width,
            model.features(),
            model.moe.input_width()
        )));
    }
    check_batch(input, &meta, scan)?;
    let (_, mut records): (BatchMeta, _) =
        RecordReader::open(input, ObjectKind::Batch, preset, key_set)?;
    let results_meta = ResultsMeta {
        batch_id: meta.batch_id.clone(),
        model_id: id,
        batch_records: meta.records,
        shard: opts.shard,
        strategy: strategy.name().to_string(),
    };
    let shard_size = opts.shard.size(meta.records);
    let partial = partial_path(out);
    let (mut writer, done) = if partial.exists() {
        if !opts.resume {
            return Err(usage(format!(
                "{} exists from an earlier run: pass --resume to continue it, or delete it",
                partial.display()
            )));
        }
        resume_checkpoint(&partial, &results_meta, preset, key_set)?
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
        server,
        model,
        input,
        &mut records,
        &mut writer,
        strategy,
        opts.shard,
        done,
        shard_size,
        progress,
    );
    drop(writer);
    let computed = match run {
        Ok(c) => c,
        Err(e) => {
            // A checkpoint without a finished record holds nothing worth resuming.
            if done == 0 && !matches!(e, JobError::Batch(BatchError::Io { .. })) {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|source| BatchError::Io {
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
    }
    if n != meta.records {
        return Err(usage(format!(
            "{}: truncated: {n} of the {} records the header promises",
            input.display(),
            meta.records
        )));
    }
    Ok(())
}

/// Evaluates the shard's records after the first `done`, appending each result to the
/// checkpoint; returns how many it computed.
#[allow(clippy::too_many_arguments)]
fn run_records(
    server: &ServerKey,
    model: &QuantizedClassifier,
    input: &Path,
    records: &mut RecordReader,
    writer: &mut RecordWriter,
    strategy: &dyn ExpertStrategy,
    shard: Shard,
    done: u64,
    shard_size: u64,
    progress: Progress,
) -> Result<u64> {
    let ev = Evaluator::new(server);
    let layer = MoeLayer::new(&ev, model.moe.clone())?;
    let (lo, hi) = (model.moe.quant.input_min(), model.moe.quant.input_max());
    let start = Instant::now();
    let mut position = 0u64; // records of this shard seen so far
    let mut computed = 0u64;
    progress(done, shard_size, 0.0);
    while let Some(rec) = records.next::<BatchRecord>(ObjectKind::BatchRecord)? {
        if !shard.contains(rec.index) {
            continue;
        }
        position += 1;
        if position <= done {
            continue;
        }
        let x = rec.x.decompress();
        if x.encoding() != layer.input_encoding() || x.len() != model.features() {
            return Err(usage(format!(
                "{}: record {} is not a {}-value input at width {}",
                input.display(),
                rec.index,
                model.features(),
                model.moe.input_width()
            )));
        }
        // The server declares the public input range itself (from the architecture).
        let x = x.with_range(ValueRange { min: lo, max: hi })?;
        let ev = Evaluator::new(server);
        let y = layer.forward(&ev, &x, strategy)?;
        writer.append(
            ObjectKind::ResultRecord,
            &ResultRecord {
                index: rec.index,
                input: rec.x,
                terms: y.y_terms,
            },
        )?;
        computed += 1;
        let secs = start.elapsed().as_secs_f64();
        progress(done + computed, shard_size, secs / computed as f64);
    }
    if done + computed != shard_size {
        return Err(usage(format!(
            "{}: the batch header promises {} records in shard {}, the file holds {}",
            input.display(),
            shard_size,
            shard,
            done + computed
        )));
    }
    Ok(computed)
}

/// Opens a checkpoint for appending: checks it belongs to this job and counts its whole
/// records (a torn last record, from a kill mid-write, is dropped).
fn resume_checkpoint(
    partial: &Path,
    expect: &ResultsMeta,
    preset: &veilmoe_engine::Preset,
    key_set: veilmoe_engine::format::KeySetId,
) -> Result<(RecordWriter, u64)> {
    let (meta, mut reader): (ResultsMeta, _) =
        RecordReader::open(partial, ObjectKind::Results, preset, key_set)?;
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
    let writer = RecordWriter::resume(partial, reader.offset(), preset, key_set)?;
    Ok((writer, done))
}

/// Merges the results of all shards of one batch into one results file (written atomically).
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<u64> {
    if parts.is_empty() {
        return Err(usage("merge needs at least one results file"));
    }
    let mut first: Option<(format::Header, ResultsMeta)> = None;
    let mut seen_parts = Vec::new();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    for path in parts {
        let bytes = format::read_file(path)?;
        let mut cursor = std::io::Cursor::new(bytes.as_slice());
        let in_path = |e: EngineError| BatchError::Mismatch {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let head = format::read_envelope(&mut cursor)
            .map_err(in_path)?
            .ok_or_else(|| usage(format!("{}: empty file", path.display())))?;
        let (header, payload) = format::read_header(&head).map_err(in_path)?;
        format::check_payload(&header, payload, ObjectKind::Results).map_err(in_path)?;
        if header.kind != ObjectKind::Results {
            return Err(usage(format!(
                "{}: holds a {}, not encrypted results",
                path.display(),
                header.kind.name()
            )));
        }
        let meta: ResultsMeta = bincode::deserialize(payload).map_err(|e| {
            usage(format!(
                "{}: results header does not decode: {e}",
                path.display()
            ))
        })?;
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
                    || m0.shard.count != meta.shard.count
                {
                    return Err(usage(format!(
                        "{}: not a shard of the same batch, model, strategy and shard count as {}",
                        path.display(),
                        parts[0].display()
                    )));
                }
            }
        }
        if seen_parts.contains(&meta.shard.part) {
            return Err(usage(format!(
                "{}: shard {} given twice",
                path.display(),
                meta.shard
            )));
        }
        seen_parts.push(meta.shard.part);
        let mut count = 0u64;
        while let Some(env) = format::read_envelope(&mut cursor).map_err(in_path)? {
            let (h, p) = format::read_header(&env).map_err(in_path)?;
            format::check_payload(&h, p, ObjectKind::ResultRecord).map_err(in_path)?;
            let rec: ResultRecord = bincode::deserialize(p)
                .map_err(|e| usage(format!("{}: a record does not decode: {e}", path.display())))?;
            if !meta.shard.contains(rec.index) {
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
    if seen_parts.len() as u32 != meta.shard.count {
        let missing: Vec<String> = (0..meta.shard.count)
            .filter(|p| !seen_parts.contains(p))
            .map(|p| format!("{p}/{}", meta.shard.count))
            .collect();
        return Err(usage(format!("missing shards: {}", missing.join(", "))));
    }
    records.sort_by_key(|(i, _)| *i);
    let merged = ResultsMeta {
        shard: Shard::WHOLE,
        ..meta
    };
    let mut bytes = format::encode_like(&header, ObjectKind::Results, &merged)?;
    for (_, env) in &records {
        bytes.extend_from_slice(env);
    }
    format::write_atomic(out, &bytes)?;
    Ok(records.len() as u64)
}

/// One decrypted record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: u64,
    /// The quantized input the client encrypted.
    pub input: Vec<i64>,
    /// The decrypted block output `y`.
    pub y: Vec<i64>,
    /// Class logits (or the block output in real units without a head).
    pub outputs: Vec<f64>,
    pub class: usize,
}

/// Client: decrypts a results file.
pub fn decrypt_results(
    client: &ClientKey,
    model: &QuantizedClassifier,
    input: &Path,
) -> Result<(ResultsMeta, Vec<Prediction>)> {
    let (meta, mut reader): (ResultsMeta, _) = RecordReader::open(
        input,
        ObjectKind::Results,
        client.preset(),
        client.key_set(),
    )?;
    let id = model_id(model);
    if meta.model_id != id {
        return Err(usage(format!(
            "{}: these results come from model {}, this model is {id}",
            input.display(),
            meta.model_id
        )));
    }
    let d = model.features();
    let mut out = Vec::new();
    while let Some(rec) = reader.next::<ResultRecord>(ObjectKind::ResultRecord)? {
        let mut x = client.decrypt_packed(&rec.input.decompress())?;
        x.truncate(d);
        let mut y = vec![0i64; d];
        for (c, term) in &rec.terms {
            let v = client.decrypt_lwe(term)?;
            if v.len() != d {
                return Err(usage(format!(
                    "{}: record {} has a {}-value output, the model has {d}",
                    input.display(),
                    rec.index,
                    v.len()
                )));
            }
            for (a, b) in y.iter_mut().zip(v) {
                *a += c * b;
            }
        }
        let outputs = model.outputs_from(&x, &y);
        out.push(Prediction {
            index: rec.index,
            class: predicted_class(&outputs),
            input: x,
            y,
            outputs,
        });
    }
    let expect = meta.shard.size(meta.batch_records);
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
    format::write_atomic(path, s.as_bytes())?;
    Ok(())
}
