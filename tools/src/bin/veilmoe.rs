//! `veilmoe`: the command-line front end. It parses, calls the libraries, and reports; errors are
//! one line on stderr with a non-zero exit.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use veilmoe_engine::format;
use veilmoe_engine::{ClientKey, Preset};
use veilmoe_protocols::{Activation, FfnKind};
use veilmoe_tools::bench::{run_primitives, PrimitiveBench};
use veilmoe_tools::moe_bench::{run_moe, MoeBench};

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
    /// Says what a veilmoe file is: kind, preset, key-set id, size.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        Command::Inspect { file, json } => {
            let bytes = format::read_file(&file)?;
            let (h, payload) = format::read_header(&bytes)?;
            format::check_payload(&h, payload, h.kind)?;
            let kind = h.kind.name();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": kind, "format_version": h.version, "preset": h.preset_name,
                        "preset_fingerprint": h.preset.to_string(), "key_set": h.key_set.to_string(),
                        "payload_bytes": h.payload_len,
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
            }
        }
    }
    Ok(())
}
