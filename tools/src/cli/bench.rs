//! `veilmoe bench`: benchmarks printing text or JSON.

use super::load_preset;
use crate::bench::capacity::CapacityBench;
use crate::bench::moe::{run_moe, MoeBench, MoeReport};
use crate::bench::multibit::run_multibit;
use crate::bench::primitives::{run_primitives, PrimitiveBench, PrimitiveReport};
use crate::bench::route::{run_route, RouteBench, RouteReport};
use crate::bench::scaling::{plot_svg, run_scaling, ScalingBench};
use crate::report::print_report;
use anyhow::{bail, Result};
use clap::Subcommand;
use veilmoe_model::{Activation, FfnKind};
use veilmoe_protocols::Strategy;

#[derive(Subcommand)]
pub enum Bench {
    /// Encrypted MoE layer per token, by strategy and number of experts (side by side).
    /// `public-routing` is INSECURE: it reveals the routing to the server (reference only).
    Moe {
        #[arg(long, default_value = "default")]
        preset: String,
        /// Comma-separated numbers of experts.
        #[arg(long, value_delimiter = ',', default_value = "1,8,16,64")]
        experts: Vec<usize>,
        /// Comma-separated strategies (public-routing is INSECURE, a reference only).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "select,compute-all,public-routing"
        )]
        strategy: Vec<Strategy>,
        #[arg(long, default_value_t = 64)]
        d: usize,
        #[arg(long, default_value_t = 64)]
        h: usize,
        #[arg(long, default_value_t = 1)]
        top_k: usize,
        /// Expert FFN: relu, gelu, silu or gated-silu.
        #[arg(long, default_value = "gated-silu")]
        ffn: String,
        /// Add a Qwen2-MoE shared expert of this many hidden units, with its sigmoid gate
        /// (0: none).
        #[arg(long, default_value_t = 0)]
        shared_hidden: usize,
        /// Gated FFNs: read the linear factor inside the product's quarter squares (a model
        /// quantized with `quantize --linear-in-product`): h PBS fewer per expert.
        #[arg(long)]
        linear_in_product: bool,
        /// Route by pairwise comparisons of the router accumulators (a model quantized with
        /// `quantize --pairwise-routing`; 2, 4 or 8 experts).
        #[arg(long)]
        pairwise_routing: bool,
        /// Timed tokens per case (median reported); timed batches for --capacity-batch.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time the `capacity` strategy on batches of this many tokens (0: not measured).
        #[arg(long, default_value_t = 0)]
        capacity_batch: usize,
        /// Slots per expert: ceil(factor * batch * top_k / experts).
        #[arg(long, default_value_t = 1.25)]
        capacity_factor: f64,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Encrypted routing over a pool of models of the given shapes (random weights: under FHE
    /// the time depends on the shapes and public capacities only): time per input of always the
    /// largest model, the per-input oblivious mode and batches with per-model capacities.
    Route {
        #[arg(long, default_value = "default")]
        preset: String,
        /// A trained pool directory (`train_pool --out`): its models, router and capacities on
        /// digits test records, with accuracy; the shape options are then unused.
        #[arg(long)]
        pool: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 64)]
        d: usize,
        /// Comma-separated hidden size of each pool model, smallest model first (gated SiLU).
        #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
        hidden: Vec<usize>,
        /// Comma-separated experts of each pool model (top-1).
        #[arg(long, value_delimiter = ',', default_value = "1,1,4")]
        experts: Vec<usize>,
        /// Inputs per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Comma-separated slots per pool model in a batch.
        #[arg(long, value_delimiter = ',', default_value = "4,2,1")]
        capacities: Vec<usize>,
        /// The model that takes the inputs whose chosen model is full.
        #[arg(long, default_value_t = 0)]
        fallback_model: usize,
        /// The fallback model's extra slots.
        #[arg(long, default_value_t = 1)]
        fallback_slots: usize,
        /// Timed inputs (and batches) per case.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Throughput against threads: batch inference of the demo model (records side by side)
    /// and batched PBS; speedup, efficiency and an Amdahl fit of the serial fraction.
    Scaling {
        #[arg(long, default_value = "default")]
        preset: String,
        /// Comma-separated thread counts (default: 1 up to all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Records of the inference batch (default: 4 per thread of the largest count).
        #[arg(long)]
        records: Option<usize>,
        /// PBS of the batched-PBS workload.
        #[arg(long, default_value_t = 64)]
        pbs: usize,
        /// Timed runs per point (median reported).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long)]
        json: bool,
        /// Write an SVG plot of speedup against threads.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        #[arg(long)]
        allow_insecure: bool,
    },
    /// tfhe's multi-bit blind rotation (grouping 2, 3, 4) against the classic one on tfhe's
    /// vetted 4-bit 2M128 sets: batch throughput (one PBS per thread, as veilmoe runs them) and
    /// the latency of one PBS with helper threads.
    Multibit {
        /// Threads of the batch, and helper threads of the single multi-bit PBS (default: all
        /// cores).
        #[arg(long)]
        threads: Option<usize>,
        /// PBS per timed batch (default: 8 per thread).
        #[arg(long)]
        batch: Option<usize>,
        /// Timed runs per figure (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
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

impl std::fmt::Display for PrimitiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "preset {}  threads {}  {}",
            self.preset, self.threads, self.machine
        )?;
        for (k, v) in &self.median_ms {
            writeln!(f, "  {k:<22} {v:>10.3} ms")?;
        }
        writeln!(
            f,
            "  engine/bare PBS        {:>10.3}",
            self.pbs_engine_over_bare
        )?;
        writeln!(
            f,
            "  batch PBS, 1 thread    {:>10.3} ms/PBS",
            self.batch_pbs_ms_1_thread
        )?;
        writeln!(
            f,
            "  batch PBS, {} threads   {:>10.3} ms/PBS (speedup {:.2})",
            self.threads, self.batch_pbs_ms_n_threads, self.batch_speedup
        )?;
        write!(
            f,
            "  batch of {}, {} threads: engine {:.3} ms/PBS, bare tfhe {:.3} ms/PBS, engine/bare {:.3}",
            self.compared_batch,
            self.threads,
            self.compared_engine_ms,
            self.compared_bare_ms,
            self.batch_engine_over_bare
        )
    }
}

impl std::fmt::Display for MoeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "preset {}  threads {}  {}  d={} h={} k={} ffn={}{}",
            self.preset,
            self.threads,
            self.machine,
            self.d,
            self.h,
            self.top_k,
            self.ffn,
            self.shared_hidden
                .map(|h| format!(" shared expert h={h}"))
                .unwrap_or_default()
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "  {:<15} E={:<4} {:>10.0} ms/token  pbs {:>6}  cbs {:>3}{}",
                c.strategy.name(),
                c.experts,
                c.median_ms_per_token,
                c.ops.get("pbs").unwrap_or(&0),
                c.ops.get("circuit_bootstrap").unwrap_or(&0),
                if c.leaks_routing { "  (INSECURE)" } else { "" }
            )?;
        }
        for c in &self.capacity_cases {
            writeln!(
                f,
                "  {:<15} E={:<4} {:>10.0} ms/token  batch {} slots {:?}  per batch: pbs {} cbs {} ext-products {}  dropped {}/{}",
                "capacity",
                c.experts,
                c.median_ms_per_token,
                c.batch,
                c.capacities,
                c.ops_per_batch.get("pbs").unwrap_or(&0),
                c.ops_per_batch.get("circuit_bootstrap").unwrap_or(&0),
                c.ops_per_batch.get("external_product").unwrap_or(&0),
                c.dropped,
                c.entries
            )?;
        }
        write!(
            f,
            "  argmax of 8: {:.0} ms, {} PBS",
            self.argmax8_ms, self.argmax8_pbs
        )?;
        for (k, v) in &self.ratios {
            write!(f, "\n  {k}: {v:.2}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RouteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "preset {}  threads {}  {}  d={} pool h={:?} E={:?}",
            self.preset, self.threads, self.machine, self.d, self.hidden, self.experts
        )?;
        for (m, ms) in self.model_ms.iter().enumerate() {
            writeln!(f, "  model {m} alone          {ms:>10.0} ms/input")?;
        }
        writeln!(
            f,
            "  per-input oblivious  {:>10.0} ms/input",
            self.per_input_ms
        )?;
        writeln!(
            f,
            "  batch of {:<3}         {:>10.0} ms/input  slots {:?} + {} fallback on model {}  per batch: pbs {} cbs {}",
            self.batch,
            self.batch_ms_per_input,
            self.capacities,
            self.fallback_slots,
            self.fallback_model,
            self.batch_ops.get("pbs").unwrap_or(&0),
            self.batch_ops.get("circuit_bootstrap").unwrap_or(&0)
        )?;
        write!(
            f,
            "  always-largest / batch: {:.2} (target >= 1.9)  per-input / always-largest: {:.2}",
            self.largest_over_batch, self.per_input_over_largest
        )?;
        if let Some(a) = &self.accuracy {
            write!(
                f,
                "\n  accuracy on {} test records: largest alone {:.2} %, per-input routing {:.2} % \
                 (choices {:?})",
                a.records,
                a.alone.last().copied().unwrap_or(0.0),
                a.per_input,
                a.choices
            )?;
            if let Some(b) = &a.batch {
                write!(
                    f,
                    ", batch mode {:.2} % ({} fallback, {} dropped)",
                    b.accuracy, b.fallback, b.dropped
                )?;
            }
        }
        if let Some(a) = &self.accuracy_simulated {
            write!(
                f,
                "\n  with the preset's read noise simulated: largest alone {:.2} %, per-input {:.2} %",
                a.alone.last().copied().unwrap_or(0.0),
                a.per_input
            )?;
            if let Some(b) = &a.batch {
                write!(f, ", batch mode {:.2} %", b.accuracy)?;
            }
        }
        Ok(())
    }
}

fn parse_ffn(ffn: &str) -> Result<FfnKind> {
    Ok(match ffn {
        "relu" => FfnKind::Plain(Activation::Relu),
        "gelu" => FfnKind::Plain(Activation::Gelu),
        "silu" => FfnKind::Plain(Activation::Silu),
        "gated-silu" => FfnKind::GatedSilu,
        other => bail!("unknown --ffn `{other}` (relu, gelu, silu, gated-silu)"),
    })
}

impl Bench {
    pub fn run(self) -> Result<()> {
        match self {
            Bench::Route {
                preset,
                pool,
                d,
                hidden,
                experts,
                batch,
                capacities,
                fallback_model,
                fallback_slots,
                runs,
                json,
                allow_insecure,
            } => {
                let preset = load_preset(&preset, allow_insecure)?;
                if hidden.is_empty() || hidden.len() != experts.len() {
                    bail!("--hidden and --experts must name the same number of pool models");
                }
                if runs == 0 || batch == 0 || d == 0 {
                    bail!("--runs, --batch and --d must be positive");
                }
                let bench = RouteBench {
                    pool_dir: pool,
                    d,
                    hidden,
                    experts,
                    batch,
                    capacities,
                    fallback_model,
                    fallback_slots,
                    runs,
                };
                let report = run_route(&preset, &bench, &mut |line| eprintln!("{line}"))?;
                print_report(&report, json)?;
            }
            Bench::Scaling {
                preset,
                threads,
                records,
                pbs,
                runs,
                json,
                plot,
                allow_insecure,
            } => {
                let preset = load_preset(&preset, allow_insecure)?;
                let cores = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1);
                let mut threads = if threads.is_empty() {
                    (1..=cores).collect()
                } else {
                    threads
                };
                threads.sort_unstable();
                threads.dedup();
                if threads.contains(&0) || runs == 0 || pbs == 0 || records == Some(0) {
                    bail!("--threads, --runs, --pbs and --records must be positive");
                }
                if let Some(p) = &plot {
                    if p.extension().is_none_or(|e| e != "svg") {
                        bail!("{}: --plot writes an .svg file", p.display());
                    }
                }
                let max_t = threads.last().copied().unwrap_or(1);
                let bench = ScalingBench {
                    records: records.unwrap_or(4 * max_t),
                    threads,
                    pbs,
                    runs,
                };
                let report = run_scaling(&preset, &bench, &mut |l| eprintln!("{l}"))?;
                if let Some(p) = &plot {
                    let svg = plot_svg(&report).map_err(anyhow::Error::msg)?;
                    veilmoe_engine::format::write_atomic(p, svg.as_bytes())?;
                    eprintln!("wrote {}", p.display());
                }
                print_report(&report, json)?;
            }
            Bench::Multibit {
                threads,
                batch,
                runs,
                json,
            } => {
                let threads = threads.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
                let batch = batch.unwrap_or(8 * threads);
                let report = run_multibit(threads, batch, runs, &|m| eprintln!("{m}"))?;
                print_report(&report, json)?;
            }
            Bench::Primitives {
                preset,
                runs,
                threads,
                json,
                allow_insecure,
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
                print_report(&run_primitives(&bench, runs, threads)?, json)?;
            }
            Bench::Moe {
                preset,
                experts,
                strategy,
                d,
                h,
                top_k,
                ffn,
                shared_hidden,
                linear_in_product,
                pairwise_routing,
                runs,
                capacity_batch,
                capacity_factor,
                json,
                allow_insecure,
            } => {
                let preset = load_preset(&preset, allow_insecure)?;
                let ffn = parse_ffn(&ffn)?;
                let capacity = (capacity_batch > 0).then_some(CapacityBench {
                    batch: capacity_batch,
                    factor: capacity_factor,
                });
                if experts.is_empty() || experts.iter().any(|&e| e == 0 || e > 128) {
                    bail!("--experts takes numbers between 1 and 128");
                }
                if pairwise_routing && experts.iter().any(|&e| e > 8 || !e.is_power_of_two()) {
                    bail!("--pairwise-routing serves 1, 2, 4 or 8 experts");
                }
                if runs == 0 || d == 0 || h == 0 || !(1..=2).contains(&top_k) {
                    bail!("--runs, --d and --h must be positive and --top-k 1 or 2");
                }
                if strategy.contains(&Strategy::PublicRouting) {
                    eprintln!("NOTE: public-routing is INSECURE: it reveals each token's expert to the server. It is a lower-bound reference only.");
                }
                let bench = MoeBench {
                    experts,
                    strategies: strategy,
                    d,
                    h,
                    top_k,
                    ffn,
                    shared_hidden: (shared_hidden > 0).then_some(shared_hidden),
                    linear_in_product,
                    pairwise_routing,
                    runs,
                    capacity,
                };
                let report = run_moe(&preset, &bench, &mut |line| eprintln!("{line}"))?;
                print_report(&report, json)?;
            }
        }
        Ok(())
    }
}
