//! The offline batch commands: keygen, quantize, encrypt, infer, merge, decrypt.

use super::{load_preset, with_threads};
use crate::files::keys::{read_client_key, read_server_key, write_client_key};
use crate::jobs::decrypt::{decrypt_results, write_predictions};
use crate::jobs::encrypt::encrypt_batch;
use crate::jobs::infer::{infer, InferOptions};
use crate::jobs::merge::merge;
use crate::model_source::{ModelArgs, ModelSource};
use crate::params::probe::{probe_token, ProbeKeys};
use crate::progress::RecordProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use veilmoe_engine::format;
use veilmoe_engine::ClientKey;
use veilmoe_model::data::read_records;
use veilmoe_model::model_file::write_model_file;
use veilmoe_model::{reference_fidelity, QuantizedClassifier, Rounding};
use veilmoe_protocols::session::Shard;
use veilmoe_protocols::{ClientSession, ServerSession, Strategy};

/// Generates client.key (mode 0600) and server.key (seeded form) for a preset.
#[derive(Args)]
pub struct Keygen {
    /// Preset name (default, fine, precise, test) or a path to a preset TOML file.
    #[arg(long, default_value = "default")]
    preset: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Allow an INSECURE (test-only) preset.
    #[arg(long)]
    allow_insecure: bool,
}

impl Keygen {
    pub fn run(self) -> Result<()> {
        let preset = load_preset(&self.preset, self.allow_insecure)?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create {}", self.out.display()))?;
        eprintln!("[1/2] client key ({preset})");
        let client = ClientKey::generate(&preset);
        eprintln!("[2/2] server key (seeded form)");
        let server_bytes = client
            .compressed_server_key_with_progress(&mut |done, total| {
                eprintln!("      part {done}/{total}")
            })
            .to_bytes()?;
        format::write_atomic(&self.out.join("server.key"), &server_bytes)?;
        write_client_key(&self.out.join("client.key"), &client)?;
        eprintln!(
            "wrote {} (key set {})",
            self.out.display(),
            client.key_set()
        );
        Ok(())
    }
}

/// Quantizes a model once into a quantized-model file: integer weights, public quantization,
/// client-side head and model id. The client keeps it; every later command takes it. Before
/// writing, the model runs one token through the encrypted layer on the preset (keys made in
/// memory): a model that would exceed the preset's noise budget or encodings is refused here,
/// with the cause, never in the middle of `infer` after the client has encrypted. What the
/// quantizer chose (a checkpoint directory) and the fidelity to the float model per stage are
/// printed first.
#[derive(Args)]
pub struct Quantize {
    #[command(flatten)]
    model: ModelArgs,
    /// The preset the model will run on (sets the bits a PBS reads and the noise budget).
    #[arg(long, default_value = "default")]
    preset: String,
    /// The strategy the model will run with (the check runs it).
    #[arg(long, value_enum, default_value = "select")]
    strategy: Strategy,
    /// The model file to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    allow_insecure: bool,
}

impl Quantize {
    pub fn run(self) -> Result<()> {
        let preset = load_preset(&self.preset, self.allow_insecure)?;
        let source = self.model.source()?;
        if let ModelSource::File(p) = &source {
            bail!("{} is already a quantized-model file", p.display());
        }
        let strategy = self.strategy.oblivious()?;
        let (model, float) = source.load_with_float(&preset)?;
        if let Some(f) = &float {
            if let Some(report) = &f.report {
                eprintln!("quantization ({}):\n{report}", source.label());
            }
            let fid = reference_fidelity(&f.float, &model, &f.records, &mut Rounding::Exact)?;
            eprintln!("fidelity to the float model ({}): {fid}", f.origin);
            for s in &fid.stages {
                eprintln!("  {:<21} {}", s.stage, s.fidelity);
            }
            if model.moe.calibrated_shift.is_some() || model.moe.calibrated_output_width.is_some() {
                let overflowing = model.overflowing_records(&f.records)?.len();
                eprintln!(
                    "calibrated ranges: read shift {}, output width {} bits; {overflowing} of {} \
                     records ({}) push a value past its box (it would wrap under encryption; \
                     --worst-case-ranges rules it out)",
                    model.moe.input_shift(),
                    model.moe.encrypted_output_width(),
                    f.records.len(),
                    f.origin
                );
            }
        }
        eprintln!("checking one token on preset {preset} (keys in memory) ...");
        let keys = ProbeKeys::generate(&preset);
        let probe = probe_token(&keys.client, &keys.server, &model.moe, strategy)?;
        if !probe.within_limits() {
            bail!(
                "the model does not run on preset `{}` with {}: {}",
                preset.name,
                self.strategy,
                probe.refusal.clone().unwrap_or_else(|| {
                    "a read exceeds the noise budget (`params check` names the stage)".into()
                })
            );
        }
        let reads = model.moe.quant.activation_reads;
        let note = format!(
            "{} quantized for {}-bit reads (preset {}){}{}{}",
            source.label(),
            preset.message_bits,
            preset.name,
            if reads > 1 {
                format!(", {reads} reads per pre-activation")
            } else {
                String::new()
            },
            if model.moe.linear_in_product {
                ", linear factor read inside the product"
            } else {
                ""
            },
            if model.moe.pairwise_routing {
                ", pairwise routing"
            } else {
                ""
            }
        );
        let id = write_model_file(&self.out, &model, &note)?;
        eprintln!("wrote {}: model {id} ({note})", self.out.display());
        Ok(())
    }
}

/// The client key and the model of a client command (encrypt, decrypt).
fn client_key_and_model(
    key: &Path,
    model: &ModelArgs,
    allow_insecure: bool,
) -> Result<(ClientKey, QuantizedClassifier)> {
    let client = read_client_key(key, allow_insecure)?;
    let model = model.source()?.load_classifier(client.preset())?;
    Ok((client, model))
}

/// Client: quantizes and encrypts records (.csv or .npy, one record per row) into a batch.
#[derive(Args)]
pub struct Encrypt {
    /// The client key (from `keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Records: .csv (optional header line, optionally .csv.gz) or .npy (records x features).
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    allow_insecure: bool,
}

impl Encrypt {
    pub fn run(self) -> Result<()> {
        let (client, model) = client_key_and_model(&self.key, &self.model, self.allow_insecure)?;
        let session = ClientSession::new(&client, &model)?;
        let records = read_records(&self.input, model.features())?;
        let overflowing = model.overflowing_records(&records)?;
        if !overflowing.is_empty() {
            let shown: Vec<String> = overflowing.iter().take(10).map(|i| i.to_string()).collect();
            eprintln!(
                "WARNING: {} of {} records (indices {}{}) push a value past one of the model's \
                 calibrated boxes: under encryption it wraps and their outputs are meaningless \
                 (quantize on records like these, with a larger --headroom, or with \
                 --worst-case-ranges)",
                overflowing.len(),
                records.len(),
                shown.join(", "),
                if overflowing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        let meta = encrypt_batch(&session, &records, &self.out)?;
        eprintln!(
            "wrote {}: {} records for model {} (key set {})",
            self.out.display(),
            meta.records,
            meta.model_id,
            client.key_set()
        );
        Ok(())
    }
}

/// Server: runs the encrypted model over a batch, with checkpoints (--resume) and shards.
#[derive(Args)]
pub struct Infer {
    #[command(flatten)]
    model: ModelArgs,
    /// The server key (from `keygen`).
    #[arg(long)]
    server_key: PathBuf,
    /// The encrypted batch (from `encrypt`).
    #[arg(long)]
    input: PathBuf,
    /// The encrypted results (written when the shard is complete; OUT.partial meanwhile).
    #[arg(long)]
    out: PathBuf,
    /// Expert strategy (public-routing is refused: it reveals the routing).
    #[arg(long, value_enum, default_value_t = Strategy::Select)]
    strategy: Strategy,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run only records with index % n == i (`i/n`), e.g. one task of a job array.
    #[arg(long, value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// Continue a killed job from OUT.partial.
    #[arg(long)]
    resume: bool,
    /// Records evaluated side by side (default: the number of worker threads; small models
    /// leave cores idle within one record).
    #[arg(long)]
    parallel_records: Option<usize>,
    /// Print the job summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    allow_insecure: bool,
}

impl Infer {
    pub fn run(self) -> Result<()> {
        self.strategy.oblivious()?;
        let server = read_server_key(&self.server_key, self.allow_insecure)?;
        let model = self.model.source()?.load_classifier(server.preset())?;
        if self.parallel_records == Some(0) {
            bail!("--parallel-records must be at least 1");
        }
        let (input, out) = (&self.input, &self.out);
        let summary = with_threads(self.threads, || {
            let opts = InferOptions {
                shard: self.shard.unwrap_or(Shard::WHOLE),
                resume: self.resume,
                parallel_records: self
                    .parallel_records
                    .unwrap_or_else(rayon::current_num_threads),
            };
            let session = ServerSession::new(&server, &model, self.strategy)?;
            let mut progress = RecordProgress::new();
            anyhow::Ok(infer(
                &server,
                &session,
                input,
                out,
                &opts,
                &mut |d, t, s| progress.update(d, t, s),
            )?)
        })??;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            eprintln!(
                "wrote {}: {} records ({} resumed), {:.2} s/record",
                out.display(),
                summary.records_in_shard,
                summary.resumed_records,
                summary.seconds_per_record
            );
        }
        Ok(())
    }
}

/// Merges the results of all shards of one batch into one results file.
#[derive(Args)]
pub struct Merge {
    #[arg(long)]
    out: PathBuf,
    /// The shards' results files.
    #[arg(required = true)]
    parts: Vec<PathBuf>,
}

impl Merge {
    pub fn run(self) -> Result<()> {
        let n = merge(&self.parts, &self.out)?;
        eprintln!(
            "wrote {}: {n} records from {} shards",
            self.out.display(),
            self.parts.len()
        );
        Ok(())
    }
}

/// Client: decrypts results into predictions (CSV: record, class, outputs). Needs the client
/// key, the results and the model file (or the embedded demo), nothing else.
#[derive(Args)]
pub struct Decrypt {
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Also print the predictions as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    allow_insecure: bool,
}

impl Decrypt {
    pub fn run(self) -> Result<()> {
        let (client, model) = client_key_and_model(&self.key, &self.model, self.allow_insecure)?;
        let session = ClientSession::new(&client, &model)?;
        let (_, preds) = decrypt_results(&session, &self.input)?;
        write_predictions(&self.out, &preds)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&preds)?);
        }
        eprintln!("wrote {}: {} predictions", self.out.display(), preds.len());
        Ok(())
    }
}
