//! `veilmoe run`: the whole offline workflow locally on the embedded digits model: key
//! generation, encryption of test records into a batch file, encrypted inference into a
//! results file, decryption; then the encrypted predictions are compared with the plaintext
//! quantized model on the same records, and the float and quantized accuracies are reported on
//! the whole test split.

use super::infer::{infer, partial_path, InferOptions};
use super::{decrypt::decrypt_results, encrypt::encrypt_batch, JobError, Progress};
use crate::bench::timing::machine_name;
use crate::model_source::{ModelSource, SourceError};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use thiserror::Error;
use veilmoe_engine::{ClientKey, Evaluator, OpKind, Preset};
use veilmoe_model::data::{digits_split, embedded_digits};
use veilmoe_model::fidelity::decrypted_fidelity;
use veilmoe_model::{argmax, reference_fidelity, Fidelity, ModelError, Rounding, VectorFidelity};
use veilmoe_protocols::session::{BatchMeta, Shard};
use veilmoe_protocols::{ClientSession, ProtocolError, ServerSession, Strategy};

#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("work directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct DemoOptions {
    pub preset: Preset,
    pub records: usize,
    pub strategy: Strategy,
    /// Where the batch and results files go (a temporary directory, removed after, if `None`).
    pub workdir: Option<PathBuf>,
}

/// What `veilmoe run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub preset: String,
    pub security_bits: u32,
    pub insecure: bool,
    pub strategy: Strategy,
    pub machine: String,
    pub threads: usize,
    pub model: String,
    /// Records of the digits test split run encrypted.
    pub records: usize,
    /// Encrypted predictions equal to the plaintext quantized model's, on those records.
    pub agreement: f64,
    /// Accuracy of the encrypted predictions on those records.
    pub encrypted_accuracy: f64,
    /// The decrypted block outputs against the float model's, on those records.
    pub encrypted_fidelity: VectorFidelity,
    /// Encrypted predictions equal to the float model's, on those records.
    pub encrypted_top1_agreement_with_float: f64,
    /// The plaintext quantized model against the float model on the whole test split.
    pub quantized_fidelity: Fidelity,
    /// Whole test split (plaintext): the float model and the quantized integer model.
    pub test_records: usize,
    pub float_accuracy: f64,
    pub quantized_accuracy: f64,
    pub keygen_seconds: f64,
    pub encrypt_seconds: f64,
    pub seconds_per_record: f64,
    pub decrypt_seconds: f64,
    /// Operations of one record, by kind.
    pub ops_per_record: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "veilmoe run: {} on preset {} ({}), strategy {}, {} threads, {}",
            self.model,
            self.preset,
            if self.insecure {
                "INSECURE, tests only".to_string()
            } else {
                format!("{}-bit security", self.security_bits)
            },
            self.strategy,
            self.threads,
            self.machine
        )?;
        writeln!(
            f,
            "  encrypted vs plaintext agreement: {:.1} % ({} records)",
            100.0 * self.agreement,
            self.records
        )?;
        writeln!(
            f,
            "  encrypted accuracy on those records: {:.1} %",
            100.0 * self.encrypted_accuracy
        )?;
        writeln!(
            f,
            "  fidelity to the float model: decrypted block output {}; top-1 agrees {:.1} %",
            self.encrypted_fidelity,
            100.0 * self.encrypted_top1_agreement_with_float
        )?;
        writeln!(
            f,
            "  quantized (plaintext) vs float: {}",
            self.quantized_fidelity
        )?;
        writeln!(
            f,
            "  digits test split ({} records): float {:.1} %, quantized {:.1} % ({:+.1} points)",
            self.test_records,
            100.0 * self.float_accuracy,
            100.0 * self.quantized_accuracy,
            100.0 * (self.quantized_accuracy - self.float_accuracy)
        )?;
        writeln!(
            f,
            "  time per record: {:.2} s (keygen {:.1} s, encrypt {:.2} s, decrypt {:.2} s)",
            self.seconds_per_record,
            self.keygen_seconds,
            self.encrypt_seconds,
            self.decrypt_seconds
        )?;
        let ops: Vec<String> = self
            .ops_per_record
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        write!(f, "  operations per record: {}", ops.join(", "))
    }
}

/// Runs the demo; `status` gets one line per phase, `progress` the per-record progress.
pub fn run_demo(
    opts: &DemoOptions,
    status: &mut dyn FnMut(&str),
    progress: Progress,
) -> Result<DemoReport, DemoError> {
    let source = ModelSource::Embedded;
    let float = source.load_float()?;
    let model = source.load_classifier(&opts.preset)?;
    let (_, test) = digits_split(&embedded_digits()?);
    let n_test = test.features.len();
    status("plaintext accuracy on the test split ...");
    let mut float_ok = 0usize;
    let mut quant_ok = 0usize;
    let mut plain_pred = Vec::with_capacity(n_test);
    let mut float_pred = Vec::with_capacity(n_test);
    for (x, &label) in test.features.iter().zip(&test.labels) {
        let fp = float.predict(x);
        float_ok += (fp == label) as usize;
        float_pred.push(fp);
        let out = model.reference_outputs(x, &mut Rounding::Exact)?;
        let p = argmax(&out);
        quant_ok += (p == label) as usize;
        plain_pred.push(p);
    }
    let quantized_fidelity =
        reference_fidelity(&float, &model, &test.features, &mut Rounding::Exact)?;
    let records = opts.records.min(n_test);

    let (dir, temporary) = match &opts.workdir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("veilmoe-run-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let result = (|| -> Result<DemoReport, DemoError> {
        status(&format!("generating keys ({}) ...", opts.preset));
        let t = Instant::now();
        let client = ClientKey::generate(&opts.preset);
        let server = client.server_key();
        let keygen_seconds = t.elapsed().as_secs_f64();

        status(&format!("encrypting {records} test records ..."));
        let t = Instant::now();
        let batch = dir.join("batch.vmb");
        let client_session = ClientSession::new(&client, &model)?;
        encrypt_batch(&client_session, &test.features[..records], &batch)?;
        let encrypt_seconds = t.elapsed().as_secs_f64();

        status(&format!("encrypted inference ({}) ...", opts.strategy));
        let results = dir.join("results.vmb");
        let _ = std::fs::remove_file(partial_path(&results));
        let server_session = ServerSession::new(&server, &model, opts.strategy)?;
        let summary = infer(
            &server,
            &server_session,
            &batch,
            &results,
            &InferOptions {
                shard: Shard::WHOLE,
                resume: false,
                parallel_records: rayon::current_num_threads(),
            },
            progress,
        )?;

        status("decrypting ...");
        let t = Instant::now();
        let (_, preds) = decrypt_results(&client_session, &results)?;
        let decrypt_seconds = t.elapsed().as_secs_f64();

        let agree = preds
            .iter()
            .filter(|p| p.class == plain_pred[p.index as usize])
            .count();
        let correct = preds
            .iter()
            .filter(|p| p.class == test.labels[p.index as usize])
            .count();
        let float_agree = preds
            .iter()
            .filter(|p| p.class == float_pred[p.index as usize])
            .count();
        let decrypted: Vec<(&[f32], &[i64])> = preds
            .iter()
            .map(|p| (test.features[p.index as usize].as_slice(), p.y.as_slice()))
            .collect();
        let encrypted_fidelity = decrypted_fidelity(&float, &model, &decrypted);
        // Operation counts of one record (the protocol's op trace is input-independent).
        let meta: BatchMeta = client_session.new_batch(1);
        let rec = client_session.encrypt_record(&meta, 0, &test.features[0])?;
        let ev = Evaluator::new(&server);
        server_session.evaluate_with(&ev, rec)?;
        let ops_per_record = OpKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), ev.ops().total(*k)))
            .filter(|(_, v)| *v > 0)
            .collect();
        Ok(DemoReport {
            preset: opts.preset.name.clone(),
            security_bits: opts.preset.security_bits,
            insecure: opts.preset.insecure,
            strategy: opts.strategy,
            machine: machine_name(),
            threads: rayon::current_num_threads(),
            model: "embedded digits-moe".into(),
            records,
            agreement: agree as f64 / records as f64,
            encrypted_accuracy: correct as f64 / records as f64,
            encrypted_fidelity,
            encrypted_top1_agreement_with_float: float_agree as f64 / records as f64,
            quantized_fidelity: quantized_fidelity.clone(),
            test_records: n_test,
            float_accuracy: float_ok as f64 / n_test as f64,
            quantized_accuracy: quant_ok as f64 / n_test as f64,
            keygen_seconds,
            encrypt_seconds,
            seconds_per_record: summary.seconds_per_record,
            decrypt_seconds,
            ops_per_record,
        })
    })();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
