//! `veilmoe`: the command-line front end. It parses, calls the libraries, and reports; errors are
//! one line on stderr with a non-zero exit.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use veilmoe_engine::format;
use veilmoe_engine::{ClientKey, Preset};
use veilmoe_tools::bench::{run_primitives, PrimitiveBench};

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
