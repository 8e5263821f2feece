//! `veilmoe`: the command-line front end. It parses, calls the libraries, and reports; errors are
//! one line on stderr with a non-zero exit.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use veilmoe_engine::format;
use veilmoe_engine::format::ObjectKind;
use veilmoe_engine::{ClientKey, Preset, ServerKey};
use veilmoe_protocols::{Activation, FfnKind};
use veilmoe_tools::batch::{BatchMeta, ResultsMeta, Shard};
use veilmoe_tools::bench::{run_primitives, PrimitiveBench};
use veilmoe_tools::input::read_records;
use veilmoe_tools::job::{self, InferOptions};
use veilmoe_tools::model_source::{load_classifier, ModelArgs};
use veilmoe_tools::moe_bench::{run_moe, MoeBench};
use veilmoe_tools::run_demo::{run_demo, DemoOptions};

#[derive(Parser)]
#[command(
    name = "veilmoe",
    version,
    about = "Private Mixture-of-Experts inference under TFHE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (JSON with --json).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Generates client.key and server.key for a preset.
    Keygen {
        /// Preset name (default, precise, test) or a path to a preset TOML file.
        #[arg(long, default_value = "default")]
        preset: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Store the server key in seeded (compressed) form.
        #[arg(long)]
        compressed: bool,
        /// Allow an INSECURE (test-only) preset.
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Client: quantizes and encrypts records (.csv or .npy, one record per row) into a batch.
    Encrypt {
        /// The client key (from `keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Records: .csv (optional header line) or .npy (records x features).
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Server: runs the encrypted model over a batch, with checkpoints (--resume) and shards.
    Infer {
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
        /// Expert strategy: select (default) or compute-all.
        #[arg(long, default_value = "select")]
        strategy: String,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Run only records with index % n == i (`i/n`), e.g. one task of a job array.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<Shard>,
        /// Continue a killed job from OUT.partial.
        #[arg(long)]
        resume: bool,
        /// Print the job summary as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Merges the results of all shards of one batch into one results file.
    Merge {
        #[arg(long)]
        out: PathBuf,
        /// The shards' results files.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
    },
    /// Client: decrypts results into predictions (CSV: record, class, outputs).
    Decrypt {
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
    },
    /// Everything locally on the embedded demo model: keygen, encrypt test records, encrypted
    /// inference, decrypt; prints agreement with the plaintext model, accuracies, time per record.
    Run {
        #[arg(long, default_value = "default")]
        preset: String,
        /// How many records of the digits test split to run encrypted.
        #[arg(long, default_value_t = 20)]
        records: usize,
        #[arg(long, default_value = "select")]
        strategy: String,
        #[arg(long)]
        threads: Option<usize>,
        /// Keep the keys, batch and results here (default: a temporary directory).
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Presets: security, precision, failure probability, key sizes, PBS time (as `params`).
    Params {
        #[command(subcommand)]
        command: veilmoe_tools::params_cli::ParamsCommand,
    },
    /// Says what a veilmoe file is: kind, preset, key-set id, size (and records for batches).
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn parse_shard(s: &str) -> std::result::Result<Shard, String> {
    Shard::parse(s)
}

/// Runs `f` in a rayon pool of `threads` threads (all cores when `None`).
fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("cannot start the thread pool")?
            .install(f)),
    }
}

fn read_client_key(path: &std::path::Path, allow_insecure: bool) -> Result<ClientKey> {
    let bytes = format::read_file(path)?;
    let key = ClientKey::from_bytes(&bytes, None, allow_insecure)
        .with_context(|| format!("{}", path.display()))?;
    Ok(key)
}

fn read_server_key(path: &std::path::Path, allow_insecure: bool) -> Result<ServerKey> {
    let bytes = format::read_file(path)?;
    let key = ServerKey::from_bytes(&bytes, None, allow_insecure)
        .with_context(|| format!("{}", path.display()))?;
    Ok(key)
}

fn fmt_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One progress line per record on stderr: done/total, time per record, ETA.
fn progress_line(done: u64, total: u64, per_record: f64) {
    if done == 0 || per_record == 0.0 {
        eprintln!("[{done}/{total}] starting");
    } else {
        let eta = per_record * total.saturating_sub(done) as f64;
        eprintln!(
            "[{done}/{total}] {:.1} s/record, ETA {}",
            per_record,
            fmt_duration(eta)
        );
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Encrypted MoE layer per token, by strategy and number of experts (side by side).
    /// `public-routing` is INSECURE: it reveals the routing to the server (reference only).
    Moe {
        #[arg(long, default_value = "default")]
        preset: String,
        /// Comma-separated numbers of experts.
        #[arg(long, value_delimiter = ',', default_value = "1,8,16,64")]
        experts: Vec<usize>,
        /// Comma-separated strategies: select, compute-all, public-routing (INSECURE).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "select,compute-all,public-routing"
        )]
        strategy: Vec<String>,
        #[arg(long, default_value_t = 64)]
        d: usize,
        #[arg(long, default_value_t = 64)]
        h: usize,
        #[arg(long, default_value_t = 1)]
        top_k: usize,
        /// Expert FFN: relu, gelu, silu or gated-silu.
        #[arg(long, default_value = "gated-silu")]
        ffn: String,
        /// Timed tokens per case (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Per-primitive medians (PBS, keyswitch, packed matvec, CMUX, circuit bootstrap, ...).
    Primitives {
        #[arg(long, default_value = "default")]
        preset: String,
        /// Timed runs per primitive (median reported).
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// Threads for the batched-PBS throughput figure (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
}

fn load_preset(name: &str, allow_insecure: bool) -> Result<Preset> {
    let p = Preset::load(name, allow_insecure)?;
    if p.insecure {
        eprintln!("WARNING: preset `{}` is INSECURE and exists for tests only. Never use it on real data.", p.name);
    }
    Ok(p)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench {
            what:
                BenchWhat::Primitives {
                    preset,
                    runs,
                    threads,
                    json,
                    allow_insecure,
                },
        } => {
            let preset = load_preset(&preset, allow_insecure)?;
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            if threads == 0 {
                bail!("--threads must be at least 1");
            }
            eprintln!("generating keys for {preset} ...");
            let bench = PrimitiveBench::new(preset);
            eprintln!("timing primitives ({runs} runs each) ...");
            let report = run_primitives(&bench, runs, threads)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "preset {}  threads {}  {}",
                    report.preset, report.threads, report.machine
                );
                for (k, v) in &report.median_ms {
                    println!("  {k:<22} {v:>10.3} ms");
                }
                println!(
                    "  engine/bare PBS        {:>10.3}",
                    report.pbs_engine_over_bare
                );
                println!(
                    "  batch PBS, 1 thread    {:>10.3} ms/PBS",
                    report.batch_pbs_ms_1_thread
                );
                println!(
                    "  batch PBS, {} threads   {:>10.3} ms/PBS (speedup {:.2})",
                    report.threads, report.batch_pbs_ms_n_threads, report.batch_speedup
                );
            }
        }
        Command::Bench {
            what:
                BenchWhat::Moe {
                    preset,
                    experts,
                    strategy,
                    d,
                    h,
                    top_k,
                    ffn,
                    runs,
                    json,
                    allow_insecure,
                },
        } => {
            let preset = load_preset(&preset, allow_insecure)?;
            let ffn = match ffn.as_str() {
                "relu" => FfnKind::Plain(Activation::Relu),
                "gelu" => FfnKind::Plain(Activation::Gelu),
                "silu" => FfnKind::Plain(Activation::Silu),
                "gated-silu" => FfnKind::GatedSilu,
                other => bail!("unknown --ffn `{other}` (relu, gelu, silu, gated-silu)"),
            };
            if experts.is_empty() || experts.iter().any(|&e| e == 0 || e > 128) {
                bail!("--experts takes numbers between 1 and 128");
            }
            if runs == 0 || d == 0 || h == 0 || !(1..=2).contains(&top_k) {
                bail!("--runs, --d and --h must be positive and --top-k 1 or 2");
            }
            if strategy.iter().any(|s| s == "public-routing") {
                eprintln!("NOTE: public-routing is INSECURE: it reveals each token's expert to the server. It is a lower-bound reference only.");
            }
            let bench = MoeBench {
                experts,
                strategies: strategy,
                d,
                h,
                top_k,
                ffn,
                runs,
            };
            let report = run_moe(&preset, &bench, &mut |line| eprintln!("{line}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "preset {}  threads {}  {}  d={} h={} k={} ffn={}",
                    report.preset,
                    report.threads,
                    report.machine,
                    report.d,
                    report.h,
                    report.top_k,
                    report.ffn
                );
                for c in &report.cases {
                    println!(
                        "  {:<15} E={:<4} {:>10.0} ms/token  pbs {:>6}  cbs {:>3}{}",
                        c.strategy,
                        c.experts,
                        c.median_ms_per_token,
                        c.ops.get("pbs").unwrap_or(&0),
                        c.ops.get("circuit_bootstrap").unwrap_or(&0),
                        if c.leaks_routing { "  (INSECURE)" } else { "" }
                    );
                }
                println!(
                    "  argmax of 8: {:.0} ms, {} PBS",
                    report.argmax8_ms, report.argmax8_pbs
                );
                for (k, v) in &report.ratios {
                    println!("  {k}: {v:.2}");
                }
            }
        }
        Command::Keygen {
            preset,
            out,
            compressed,
            allow_insecure,
        } => {
            let preset = load_preset(&preset, allow_insecure)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            eprintln!("[1/2] client key ({preset})");
            let client = ClientKey::generate(&preset);
            eprintln!("[2/2] server key");
            let server_bytes = if compressed {
                client.compressed_server_key().to_bytes()?
            } else {
                client
                    .server_key_with_progress(&mut |done, total| {
                        eprintln!("      part {done}/{total}")
                    })
                    .to_bytes()?
            };
            format::write_atomic(&out.join("server.key"), &server_bytes)?;
            format::write_atomic(&out.join("client.key"), &client.to_bytes()?)?;
            eprintln!("wrote {} (key set {})", out.display(), client.key_set());
        }
        Command::Encrypt {
            key,
            input,
            out,
            model,
            allow_insecure,
        } => {
            let client = read_client_key(&key, allow_insecure)?;
            let model = load_classifier(&model.source(), client.preset().message_bits)?;
            let records = read_records(&input, model.features())?;
            let meta = job::encrypt_batch(&client, &model, &records, &out)?;
            eprintln!(
                "wrote {}: {} records for model {} (key set {})",
                out.display(),
                meta.records,
                meta.model_id,
                client.key_set()
            );
        }
        Command::Infer {
            model,
            server_key,
            input,
            out,
            strategy,
            threads,
            shard,
            resume,
            json,
            allow_insecure,
        } => {
            job::strategy_by_name(&strategy)?;
            let server = read_server_key(&server_key, allow_insecure)?;
            let model = load_classifier(&model.source(), server.preset().message_bits)?;
            let opts = InferOptions {
                strategy: &strategy,
                shard: shard.unwrap_or(Shard::WHOLE),
                resume,
            };
            let summary = with_threads(threads, || {
                job::infer(&server, &model, &input, &out, &opts, &mut progress_line)
            })??;
            if json {
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
        }
        Command::Merge { out, parts } => {
            let n = job::merge(&parts, &out)?;
            eprintln!(
                "wrote {}: {n} records from {} shards",
                out.display(),
                parts.len()
            );
        }
        Command::Decrypt {
            key,
            input,
            out,
            model,
            json,
            allow_insecure,
        } => {
            let client = read_client_key(&key, allow_insecure)?;
            let model = load_classifier(&model.source(), client.preset().message_bits)?;
            let (_, preds) = job::decrypt_results(&client, &model, &input)?;
            job::write_predictions(&out, &preds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&preds)?);
            }
            eprintln!("wrote {}: {} predictions", out.display(), preds.len());
        }
        Command::Run {
            preset,
            records,
            strategy,
            threads,
            workdir,
            json,
            allow_insecure,
        } => {
            let preset = load_preset(&preset, allow_insecure)?;
            job::strategy_by_name(&strategy)?;
            if records == 0 {
                bail!("--records must be at least 1");
            }
            let opts = DemoOptions {
                preset,
                records,
                strategy,
                workdir,
            };
            let report = with_threads(threads, || {
                run_demo(&opts, &mut |line| eprintln!("{line}"), &mut progress_line)
            })??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Params { command } => veilmoe_tools::params_cli::run_params(command)?,
        Command::Inspect { file, json } => {
            let bytes = format::read_file(&file)?;
            let mut cursor = std::io::Cursor::new(bytes.as_slice());
            let first = format::read_envelope(&mut cursor)?.context("empty file")?;
            let (h, payload) = format::read_header(&first)?;
            format::check_payload(&h, payload, h.kind)?;
            // Batch and results files: every record envelope is checked too.
            let mut records = 0u64;
            while let Some(env) = format::read_envelope(&mut cursor)? {
                let (rh, p) = format::read_header(&env)?;
                format::check_payload(&rh, p, rh.kind)
                    .with_context(|| format!("record {records}"))?;
                records += 1;
            }
            let kind = h.kind.name();
            let detail = match h.kind {
                ObjectKind::Batch => {
                    let m: BatchMeta = bincode::deserialize(payload)
                        .context("the batch header does not decode")?;
                    Some(serde_json::to_value(m)?)
                }
                ObjectKind::Results => {
                    let m: ResultsMeta = bincode::deserialize(payload)
                        .context("the results header does not decode")?;
                    Some(serde_json::to_value(m)?)
                }
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": kind, "format_version": h.version, "preset": h.preset_name,
                        "preset_fingerprint": h.preset.to_string(), "key_set": h.key_set.to_string(),
                        "payload_bytes": h.payload_len, "file_bytes": bytes.len(),
                        "records": records, "header": detail,
                    })
                );
            } else {
                println!(
                    "{}: {kind}, preset {} ({}), key set {}, {} payload bytes",
                    file.display(),
                    h.preset_name,
                    h.preset,
                    h.key_set,
                    h.payload_len
                );
                if let Some(d) = detail {
                    println!("  {records} records; {d}");
                }
            }
        }
    }
    Ok(())
}
