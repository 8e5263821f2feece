//! The `params` command line, shared by the `params` binary and `veilmoe params` (binary-edge
//! code: it parses, calls [`crate::params`], and prints).

use crate::model_source::ModelArgs;
use crate::params::sweep::{output_kind, parse_bits, OutputKind, SweepSpec};
use crate::params::{calibrate_pbs_ms, check, estimate, human_bytes, report, sweep, PresetReport};
use crate::report::print_report;
use anyhow::Result;
use clap::Subcommand;
use veilmoe_engine::Preset;
use veilmoe_protocols::Strategy;

#[derive(Subcommand)]
pub enum ParamsCommand {
    /// Every embedded preset: security, precision, failure probability, key sizes, PBS time.
    List {
        /// Measure the PBS time of presets not yet calibrated on this machine (cached).
        #[arg(long)]
        calibrate: bool,
        #[arg(long)]
        json: bool,
    },
    /// Will a model run correctly on a preset? Accumulator ranges, the noise of every
    /// bootstrapped read (one token through the real encrypted layer, keys made in memory),
    /// failure probability per token and per batch, security, and a verdict with advice.
    Check {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "default")]
        preset: String,
        #[arg(long, value_enum, default_value_t = Strategy::Select)]
        strategy: Strategy,
        /// Batch size for the per-batch failure probability.
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        #[arg(long)]
        json: bool,
    },
    /// Op counts per stage, estimated time per token and per batch (unit costs measured on
    /// this machine), key sizes, upload and download bytes per token.
    Estimate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "default")]
        preset: String,
        #[arg(long, value_enum, default_value_t = Strategy::Select)]
        strategy: Strategy,
        /// Threads the estimate assumes (default: this machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        #[arg(long)]
        json: bool,
    },
    /// A grid over quantization bits, presets, top-k and strategies: accuracy from the
    /// simulation mode on labelled test records, estimated time per token, failure probability,
    /// and the accuracy/time Pareto front. Writes CSV or JSON (--out) and an SVG plot (--plot).
    Sweep {
        #[command(flatten)]
        model: ModelArgs,
        /// Labelled test records: CSV (optionally .gz), features then an integer label per line
        /// (default for the embedded model: its 360-record test split).
        #[arg(long)]
        test: Option<std::path::PathBuf>,
        /// Quantization bits: a range `3..6` (inclusive) or a list `3,4` (default: 3 up to the
        /// most bits a swept preset reads).
        #[arg(long)]
        bits: Option<String>,
        /// Presets (embedded names or preset TOML files), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "default")]
        presets: Vec<String>,
        /// Experts per token, comma-separated (default: the model's own).
        #[arg(long = "top-k", value_delimiter = ',')]
        top_k: Vec<usize>,
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = Strategy::OBLIVIOUS)]
        strategies: Vec<Strategy>,
        /// Gated models: where the linear factor is read, comma-separated: `own` (a PBS of its
        /// own), `product` (inside the product's quarter squares; see `quantize
        /// --linear-in-product`). Default: as the model source says.
        #[arg(long = "linear-factor", value_enum, value_delimiter = ',')]
        linear_factor: Vec<LinearFactor>,
        /// How experts are chosen, comma-separated: `tournament` (over the logit reads),
        /// `pairwise` (comparisons of the router accumulators; see `quantize
        /// --pairwise-routing`; 2, 4 or 8 experts). Default: as the model source says.
        #[arg(long, value_enum, value_delimiter = ',')]
        routing: Vec<Routing>,
        /// Threads the time estimate assumes (default: this machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Simulation seeds averaged for each accuracy.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Write every cell to this file (.csv or .json).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Write an SVG plot of accuracy against time, the Pareto front highlighted.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one preset (an embedded name or a preset TOML file).
    Show {
        preset: String,
        #[arg(long)]
        calibrate: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Where a gated FFN's linear factor is read (`params sweep --linear-factor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LinearFactor {
    /// By a PBS of its own.
    Own,
    /// Inside the product's quarter squares.
    Product,
}

/// How a router chooses its experts (`params sweep --routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// A tournament over the logit reads.
    Tournament,
    /// Pairwise comparisons of the router accumulators.
    Pairwise,
}

/// `--threads`, or this machine's cores when not given.
fn threads_or_cores(threads: Option<usize>) -> Result<usize> {
    let t = threads.unwrap_or_else(rayon::current_num_threads);
    if t == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    Ok(t)
}

fn reports(presets: Vec<Preset>, calibrate: bool) -> Result<Vec<PresetReport>> {
    presets
        .into_iter()
        .map(|p| {
            let mut r = report(&p);
            if calibrate && r.pbs_ms.is_none() {
                eprintln!("calibrating {} (keyswitch + PBS, one thread) ...", p.name);
                r.pbs_ms = Some(calibrate_pbs_ms(&p, 5)?);
            }
            Ok(r)
        })
        .collect()
}

pub fn run_params(cmd: ParamsCommand) -> Result<()> {
    match cmd {
        ParamsCommand::List { calibrate, json } => {
            let presets = veilmoe_engine::preset::EMBEDDED_PRESETS
                .iter()
                .map(|(n, _)| Preset::load(n, true))
                .collect::<veilmoe_engine::Result<Vec<_>>>()?;
            let rs = reports(presets, calibrate)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rs)?);
                return Ok(());
            }
            println!(
                "{:<9} {:>9} {:>10} {:>5} {:>17} {:>11} {:>11} {:>10}",
                "preset",
                "security",
                "estimated",
                "bits",
                "p_fail/PBS",
                "server key",
                "client key",
                "PBS"
            );
            for r in &rs {
                println!(
                    "{:<9} {:>9} {:>10} {:>5} {:>17} {:>11} {:>11} {:>10}",
                    r.name,
                    if r.insecure {
                        "INSECURE".to_string()
                    } else {
                        format!("{} bits", r.security_bits)
                    },
                    if r.estimated_security_bits == 0 {
                        "< 80".to_string()
                    } else {
                        format!(">= {}", r.estimated_security_bits)
                    },
                    r.message_bits,
                    format!("2^{:.1}", r.log2_p_fail_declared),
                    human_bytes(r.key_sizes.server_key),
                    human_bytes(r.key_sizes.client_key),
                    r.pbs_ms
                        .map(|m| format!("{m:.1} ms"))
                        .unwrap_or_else(|| "-".into())
                );
            }
            println!(
                "(estimated: certified by Concrete's lattice-estimator-fitted curves for the \
                 weaker of the LWE and GLWE keys)"
            );
            if rs.iter().any(|r| r.pbs_ms.is_none()) {
                println!("(PBS: `params list --calibrate` measures it on this machine)");
            }
        }
        ParamsCommand::Check {
            model,
            preset,
            strategy,
            batch,
            json,
        } => {
            let p = Preset::load(&preset, true)?;
            let source = model.source()?;
            let r = check::check(&p, &source, strategy, batch, &mut |l| eprintln!("{l}"))?;
            print_report(&r, json)?;
            if !r.pass {
                anyhow::bail!("the model does not pass on preset `{}`", r.preset);
            }
        }
        ParamsCommand::Estimate {
            model,
            preset,
            strategy,
            threads,
            batch,
            json,
        } => {
            let p = Preset::load(&preset, true)?;
            let source = model.source()?;
            let threads = threads_or_cores(threads)?;
            let r = estimate::estimate(&p, &source, strategy, threads, batch, &mut |l| {
                eprintln!("{l}")
            })?;
            print_report(&r, json)?;
        }
        ParamsCommand::Sweep {
            model,
            test,
            bits,
            presets,
            top_k,
            strategies,
            linear_factor,
            routing,
            threads,
            seeds,
            out,
            plot,
            json,
        } => {
            // Everything the user typed is checked before the first key is made.
            if let Some(p) = &out {
                if output_kind(p).map_err(anyhow::Error::msg)? == OutputKind::Svg {
                    anyhow::bail!(
                        "{}: --out writes .csv or .json (--plot writes .svg)",
                        p.display()
                    );
                }
            }
            if let Some(p) = &plot {
                if output_kind(p).map_err(anyhow::Error::msg)? != OutputKind::Svg {
                    anyhow::bail!("{}: --plot writes an .svg file", p.display());
                }
            }
            let presets = presets
                .iter()
                .map(|n| Preset::load(n, true))
                .collect::<veilmoe_engine::Result<Vec<_>>>()?;
            let bits = match bits {
                Some(b) => parse_bits(&b).map_err(anyhow::Error::msg)?,
                None => (3..=presets.iter().map(|p| p.message_bits).max().unwrap_or(4)).collect(),
            };
            for s in &strategies {
                s.oblivious()?;
            }
            let threads = threads_or_cores(threads)?;
            let source = model.source()?;
            let test = source.test_records(test.as_deref())?;
            let spec = SweepSpec {
                bits,
                presets,
                top_k,
                strategies,
                linear_in_product: linear_factor
                    .iter()
                    .map(|l| *l == LinearFactor::Product)
                    .collect(),
                pairwise_routing: routing.iter().map(|r| *r == Routing::Pairwise).collect(),
                threads,
                seeds,
            };
            let r = sweep::sweep(&source, &test, &spec, &mut |l| eprintln!("{l}"))?;
            for p in out.iter().chain(&plot) {
                sweep::write_report(&r, p).map_err(anyhow::Error::msg)?;
                eprintln!("wrote {}", p.display());
            }
            print_report(&r, json)?;
        }
        ParamsCommand::Show {
            preset,
            calibrate,
            json,
        } => {
            let p = Preset::load(&preset, true)?;
            for r in reports(vec![p], calibrate)? {
                print_report(&r, json)?;
            }
        }
    }
    Ok(())
}
