//! `veilmoe route`: encrypted routing over a model pool, both parties in one process. Keys are
//! generated; the client encrypts records of the digits test split; the server evaluates them
//! in batches under the pool's public capacities (the router, the oblivious dispatch, each
//! model on its slots only: it learns the batch size and the capacities, nothing else); the
//! client decrypts each input's answer. The decrypted predictions are compared with the
//! plaintext reference of the same routing, capacity and fallback rules, and with the labels.
//!
//! The pool's inputs are quantized with the digits training split as calibration (what
//! `train_pool` trains on): this command runs digits pools.

use super::Progress;
use crate::bench::timing::machine_name;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;
use veilmoe_engine::{ClientKey, Evaluator, OpKind, Preset};
use veilmoe_model::data::{digits_split, embedded_digits};
use veilmoe_model::pool::{place, Pool, PoolCapacities};
use veilmoe_model::pool_files::PoolFiles;
use veilmoe_model::{argmax, ModelError, Rounding};
use veilmoe_protocols::pool::PoolLayer;
use veilmoe_protocols::ProtocolError;

#[derive(Debug, Error)]
pub enum RouteError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct RouteOptions {
    pub preset: Preset,
    pub pool_dir: PathBuf,
    /// Records of the digits test split to run (the last batch may be short).
    pub records: usize,
    /// Per-record answers as CSV.
    pub out: Option<PathBuf>,
}

/// One record's answer, encrypted and by the plaintext reference (`None`: dropped).
#[derive(Debug, Clone, Serialize)]
pub struct RoutedRecord {
    pub index: usize,
    pub label: usize,
    pub model: Option<usize>,
    pub class: Option<usize>,
    pub reference_model: Option<usize>,
    pub reference_class: Option<usize>,
}

/// What `veilmoe route` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub preset: String,
    pub security_bits: u32,
    pub insecure: bool,
    pub machine: String,
    pub threads: usize,
    pub pool: String,
    pub models: Vec<String>,
    pub batch: usize,
    pub capacities: Vec<usize>,
    pub fallback: String,
    pub fallback_slots: usize,
    /// The fallback model ran on every input in place (it covers the batch).
    pub covering: bool,
    pub records: usize,
    /// Answers equal to the reference's (same model, same class).
    pub agreement: f64,
    pub encrypted_accuracy: f64,
    /// The reference of the same rules, and the largest model alone, on the same records.
    pub reference_accuracy: f64,
    pub largest_accuracy: f64,
    /// How many records each model answered (encrypted), and how many none did.
    pub answered_by: Vec<usize>,
    pub dropped: usize,
    pub keygen_seconds: f64,
    pub encrypt_seconds: f64,
    /// Server time per input (router, dispatch, models).
    pub seconds_per_input: f64,
    pub decrypt_seconds: f64,
    /// Operations of the first batch, by kind.
    pub ops_per_batch: BTreeMap<String, u64>,
    #[serde(skip)]
    pub answers: Vec<RoutedRecord>,
}

impl fmt::Display for RouteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = if self.insecure {
            "INSECURE, tests only".to_string()
        } else {
            format!("{}-bit security", self.security_bits)
        };
        writeln!(
            f,
            "veilmoe route: pool {} ({}) on preset {} ({security}), {} threads, {}",
            self.pool,
            self.models.join(", "),
            self.preset,
            self.threads,
            self.machine
        )?;
        writeln!(
            f,
            "  batches of {}: slots {:?}, fallback {} with {} extra slots{}",
            self.batch,
            self.capacities,
            self.fallback,
            self.fallback_slots,
            if self.covering {
                " (covering: runs on every input)"
            } else {
                ""
            }
        )?;
        let pct = |v: f64| 100.0 * v;
        writeln!(
            f,
            "  {} records: encrypted answers equal the reference on {:.1} %; accuracy {:.1} % \
             (reference {:.1} %, largest model alone {:.1} %)",
            self.records,
            pct(self.agreement),
            pct(self.encrypted_accuracy),
            pct(self.reference_accuracy),
            pct(self.largest_accuracy)
        )?;
        writeln!(
            f,
            "  answered by {:?}, dropped {}",
            self.answered_by, self.dropped
        )?;
        writeln!(
            f,
            "  server time per input {:.2} s (keygen {:.1} s, encrypt {:.2} s, decrypt {:.2} s)",
            self.seconds_per_input, self.keygen_seconds, self.encrypt_seconds, self.decrypt_seconds
        )?;
        let ops: Vec<String> = self
            .ops_per_batch
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        write!(f, "  operations per batch: {}", ops.join(", "))
    }
}

/// The model that answered a record and its predicted class (`None`: dropped).
type Answer = (Option<usize>, Option<usize>);

/// The plaintext reference's answers for one batch of raw records.
fn reference_batch(
    pool: &Pool,
    caps: &PoolCapacities,
    raw: &[Vec<f32>],
) -> Result<Vec<Answer>, RouteError> {
    let choices = raw
        .iter()
        .map(|r| {
            Ok(pool
                .choose(&pool.models[0].quantize_input(r)?, &mut Rounding::Exact)
                .model)
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    place(&choices, caps)?
        .into_iter()
        .zip(raw)
        .map(|(p, r)| {
            let m = caps.answering_model(p);
            let class = match m {
                Some(m) => Some(argmax(
                    &pool.models[m].reference_outputs(r, &mut Rounding::Exact)?,
                )),
                None => None,
            };
            Ok((m, class))
        })
        .collect()
}

/// Runs the pool; `status` gets one line per phase, `progress` the per-batch progress.
pub fn run_route(
    opts: &RouteOptions,
    status: &mut dyn FnMut(&str),
    progress: Progress,
) -> Result<RouteReport, RouteError> {
    let files = PoolFiles::load(&opts.pool_dir)?;
    let (train, test) = digits_split(&embedded_digits()?);
    let (pool, caps) = files.quantize(opts.preset.message_bits, &train.features)?;
    let batch = files.config.capacities.batch;
    let records = opts.records.min(test.len());
    let raw = &test.features[..records];
    let labels = &test.labels[..records];

    status(&format!("generating keys ({}) ...", opts.preset));
    let t = Instant::now();
    let client = ClientKey::generate(&opts.preset);
    let server = client.server_key();
    let keygen_seconds = t.elapsed().as_secs_f64();
    let layer = PoolLayer::new(&Evaluator::new(&server), pool.clone())?;

    let (mut encrypt_seconds, mut server_seconds, mut decrypt_seconds) = (0.0, 0.0, 0.0);
    let mut answers = Vec::with_capacity(records);
    let mut ops_per_batch = BTreeMap::new();
    let mut covering = false;
    status(&format!(
        "routing {records} records in batches of {batch} ..."
    ));
    for (b, chunk) in raw.chunks(batch).enumerate() {
        let start = b * batch;
        let t = Instant::now();
        let x_q = chunk
            .iter()
            .map(|r| pool.models[0].quantize_input(r))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs = x_q
            .iter()
            .map(|x| layer.encrypt(&client, x))
            .collect::<Result<Vec<_>, _>>()?;
        encrypt_seconds += t.elapsed().as_secs_f64();

        let ev = Evaluator::new(&server);
        let t = Instant::now();
        let out = layer.forward_batch(&ev, &inputs, &caps)?;
        server_seconds += t.elapsed().as_secs_f64();
        covering = out.covered;
        if b == 0 {
            ops_per_batch = OpKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), ev.ops().total(*k)))
                .filter(|(_, v)| *v > 0)
                .collect();
        }

        let t = Instant::now();
        let decrypted = out.decrypt(&client, &pool)?;
        decrypt_seconds += t.elapsed().as_secs_f64();
        let reference = reference_batch(&pool, &caps, chunk)?;
        for (i, (answer, (reference_model, reference_class))) in
            decrypted.into_iter().zip(reference).enumerate()
        {
            let (model, class) = match answer {
                Some(a) => (
                    Some(a.model),
                    Some(argmax(&pool.models[a.model].outputs_from(&x_q[i], &a.y))),
                ),
                None => (None, None),
            };
            answers.push(RoutedRecord {
                index: start + i,
                label: labels[start + i],
                model,
                class,
                reference_model,
                reference_class,
            });
        }
        let done = answers.len();
        progress(done as u64, records as u64, server_seconds / done as f64);
    }
    if let Some(out) = &opts.out {
        write_answers(out, &answers, &files)?;
    }

    let n = records.max(1) as f64;
    let share =
        |f: &dyn Fn(&RoutedRecord) -> bool| answers.iter().filter(|a| f(a)).count() as f64 / n;
    let mut answered_by = vec![0; pool.models.len()];
    answers
        .iter()
        .filter_map(|a| a.model)
        .for_each(|m| answered_by[m] += 1);
    let largest = pool.models.len() - 1;
    let largest_right = raw
        .iter()
        .zip(labels)
        .map(|(r, &l)| {
            Ok(
                (argmax(&pool.models[largest].reference_outputs(r, &mut Rounding::Exact)?) == l)
                    as usize,
            )
        })
        .sum::<Result<usize, ModelError>>()?;
    Ok(RouteReport {
        preset: opts.preset.name.clone(),
        security_bits: opts.preset.security_bits,
        insecure: opts.preset.insecure,
        machine: machine_name(),
        threads: rayon::current_num_threads(),
        pool: opts.pool_dir.display().to_string(),
        models: files.config.models.iter().map(|m| m.name.clone()).collect(),
        batch,
        capacities: caps.per_model.per_destination().to_vec(),
        fallback: files.config.capacities.fallback.clone(),
        fallback_slots: caps.fallback_slots,
        covering,
        records,
        agreement: share(&|a| a.model == a.reference_model && a.class == a.reference_class),
        encrypted_accuracy: share(&|a| a.class == Some(a.label)),
        reference_accuracy: share(&|a| a.reference_class == Some(a.label)),
        largest_accuracy: largest_right as f64 / n,
        dropped: answers.iter().filter(|a| a.model.is_none()).count(),
        answered_by,
        keygen_seconds,
        encrypt_seconds,
        seconds_per_input: server_seconds / n,
        decrypt_seconds,
        ops_per_batch,
        answers,
    })
}

/// Writes the answers as CSV (`index,label,model,class,reference_model,reference_class`; empty
/// where dropped) through a temporary file, so that a failure leaves no half-written file.
fn write_answers(
    path: &Path,
    answers: &[RoutedRecord],
    files: &PoolFiles,
) -> Result<(), RouteError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| RouteError::Io { path, source }
    };
    let name = |m: Option<usize>| {
        m.and_then(|m| files.config.models.get(m))
            .map_or(String::new(), |e| e.name.clone())
    };
    let num = |v: Option<usize>| v.map_or(String::new(), |v| v.to_string());
    let mut text = String::from("index,label,model,class,reference_model,reference_class\n");
    for a in answers {
        text += &format!(
            "{},{},{},{},{},{}\n",
            a.index,
            a.label,
            name(a.model),
            num(a.class),
            name(a.reference_model),
            num(a.reference_class)
        );
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()));
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(())
}
