//! Trains veilmoe's embedded demo model: a Mixtral-format MoE classifier of the UCI
//! handwritten digits (the embedded copy of model/data/digits.csv.gz, the fixed 1,437 / 360
//! split), written as `{out}/{config.json, model.safetensors}`.
//!
//! The training itself is `veilmoe_model::train` (architecture, phases, measured figures: see
//! its docs); this binary parses the flags, measures the final robustness under the `default`
//! preset's simulated reads, and writes the files. Deterministic: the same command writes
//! byte-identical files, and the defaults reproduce `model/demo/digits-moe`.
//!
//! Usage: `cargo run --release -p veilmoe-tools --bin train_digits [-- --out model/demo/digits-moe]`

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;
use veilmoe_protocols::engine::Preset;
use veilmoe_protocols::model::data::{digits_split, embedded_digits, load_labelled};
use veilmoe_protocols::model::train::{train_digits, TrainOptions, TrainShape};
use veilmoe_protocols::simulate::read_noise_std;

/// The preset whose simulated reads measure the trained model's robustness.
const ROBUSTNESS_PRESET: &str = "default";

#[derive(Parser)]
#[command(about = "Train the embedded digits MoE demo model (deterministic)")]
struct Args {
    /// Output model directory.
    #[arg(long, default_value = "model/demo/digits-moe")]
    out: PathBuf,
    /// Digits file (default: the embedded copy of model/data/digits.csv.gz).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Epochs of float training.
    #[arg(long, default_value_t = 120)]
    float_epochs: usize,
    /// Epochs of quantization-aware training.
    #[arg(long, default_value_t = 60)]
    qat_epochs: usize,
    /// L1 penalty on the first-stage weights (router, W1, W3).
    #[arg(long, default_value_t = 2e-4)]
    l1: f64,
    /// Load-balancing weight.
    #[arg(long, default_value_t = 0.3)]
    balance: f64,
    /// Weight of the router's quantization-aware term (integer logits, straight-through).
    #[arg(long, default_value_t = 1.0)]
    router_qat: f64,
    /// L1 penalty on W2 (the output read's shift follows the worst W2 row's L1 norm).
    #[arg(long, default_value_t = 0.0)]
    l1_w2: f64,
    /// Non-zero weights kept per W2 row (projection after each step, from the middle of the
    /// float phase on): the output read's shift follows the worst row's L1 norm.
    #[arg(long, default_value_t = 2)]
    w2_keep: usize,
    /// L1 budget of an integer W2 row during quantization-aware training.
    #[arg(long, default_value_t = 3)]
    w2_l1_budget: i64,
    /// L1 radius of each W1 and W3 row (projection after each step): W1 rows share one read
    /// scale, set by the worst row's L1 norm, so no row may grow far beyond the others.
    #[arg(long, default_value_t = 3.0)]
    l1_radius: f64,
    /// L1 radius of each router row.
    #[arg(long, default_value_t = 8.0)]
    router_radius: f64,
    /// Probability that a training record is shifted by one pixel (data augmentation).
    #[arg(long, default_value_t = 0.0)]
    augment: f64,
    /// Augmentation probability of the quantized loss (the float loss keeps `augment`): the
    /// 4-bit block cannot fit shifted digits as well, and fitting them costs it accuracy.
    #[arg(long, default_value_t = 0.0)]
    qat_augment: f64,
    /// Decoupled weight decay (AdamW) on all weights.
    #[arg(long, default_value_t = 1e-3)]
    weight_decay: f64,
    /// Weight of the quantized loss next to the float loss in the quantization-aware phase.
    #[arg(long, default_value_t = 2.0)]
    quant_weight: f64,
    /// Extra decoupled weight decay on W2 (both phases): the encrypted path's +-1 errors of
    /// the expert-output reads reach the logits as `y_scale * head weight`, and `y_scale`
    /// follows the largest W2 weight; this sets how much the classifier leans on the noisy
    /// expert output rather than on the exact residual input.
    #[arg(long, default_value_t = 30.0)]
    w2_decay: f64,
    /// Weight of the quantized loss of every expert that one router read rounding the other
    /// way could select instead of the top one (its logit within one step of the top).
    #[arg(long, default_value_t = 1.0)]
    router_alt: f64,
    /// Seeds of the final simulated-vs-exact agreement measurement (`0..agreement_seeds`).
    #[arg(long, default_value_t = 5)]
    agreement_seeds: u64,
    /// Experts of the trained block (the demo's 4 by default).
    #[arg(long, default_value_t = TrainShape::default().experts)]
    experts: usize,
    /// Hidden units per expert (the demo's 16 by default).
    #[arg(long, default_value_t = TrainShape::default().hidden)]
    hidden: usize,
    /// Train for the quantization the search finds for the float-phase model, instead of the
    /// one the demo model was trained for (pinned by default, so the defaults reproduce it).
    #[arg(long)]
    searched_quantization: bool,
    /// Leave out the residual connection (the head sees the expert output only).
    #[arg(long)]
    no_residual: bool,
}

impl Args {
    fn options(&self, read_noise_std: f64) -> TrainOptions {
        TrainOptions {
            shape: TrainShape {
                experts: self.experts,
                hidden: self.hidden,
                residual: !self.no_residual,
            },
            seed: self.seed,
            float_epochs: self.float_epochs,
            qat_epochs: self.qat_epochs,
            l1: self.l1,
            balance: self.balance,
            router_qat: self.router_qat,
            l1_w2: self.l1_w2,
            w2_keep: self.w2_keep,
            w2_l1_budget: self.w2_l1_budget,
            l1_radius: self.l1_radius,
            router_radius: self.router_radius,
            augment: self.augment,
            qat_augment: self.qat_augment,
            weight_decay: self.weight_decay,
            quant_weight: self.quant_weight,
            w2_decay: self.w2_decay,
            router_alt: self.router_alt,
            quantization: if self.searched_quantization {
                None
            } else {
                TrainOptions::default().quantization
            },
            agreement_seeds: self.agreement_seeds,
            read_noise_std: Some(read_noise_std),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let all = match &args.data {
        Some(p) => load_labelled(p)?,
        None => embedded_digits()?,
    };
    let (train, test) = digits_split(&all);
    println!(
        "digits: {} train, {} test records ({} features)",
        train.len(),
        test.len(),
        train.feature_count()
    );
    let preset = Preset::load(ROBUSTNESS_PRESET, false)?;
    let opts = args.options(read_noise_std(&preset));
    let trained = train_digits(&opts, &train, &test, &mut |line| println!("{line}"))?;
    if let Some(r) = &trained.robustness {
        println!("{}", r.report(&format!("{ROBUSTNESS_PRESET} preset")));
    }
    trained
        .model
        .save_mixtral(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
